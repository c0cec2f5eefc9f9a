import json
import os
import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import SPANISH, one_line_error, run_train

from export import onnx as export_onnx
from export import verify as export_verify
from export.onnx import main as export_main
from export.onnx import model_from_checkpoint
from trainer.checkpoint import load_checkpoint


def torch_model(run_dir):
    ckpt = load_checkpoint(run_dir / "ckpt.pt")
    return model_from_checkpoint(ckpt, run_dir / "ckpt.pt"), ckpt


@pytest.mark.parametrize("batch", [1, 4, 32])
def test_parity_with_pytorch_step(trained_run, trained_onnx, corpus_100k, batch):
    """One exported file (dynamic batch) against the PyTorch step: logits and state, 120 characters, on a model
    that has learned the text (helpers.TRAINED)."""
    model, ckpt = torch_model(trained_run)
    index = {ch: i for i, ch in enumerate(ckpt["vocab"])}
    text = corpus_100k.read_text(encoding="utf-8")[:20_000]
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    offsets = np.arange(batch) * (len(ids) // batch - 200)
    session = ort.InferenceSession(str(trained_onnx), providers=["CPUExecutionProvider"])
    h_t, c_t = model.zero_state(batch)
    h_o, c_o = h_t.numpy(), c_t.numpy()
    worst = 0.0
    with torch.no_grad():
        for t in range(120):
            token = ids[offsets + t]
            logits_t, h_t, c_t = model.step(torch.from_numpy(token), h_t, c_t)
            logits_o, h_o, c_o = session.run(None, {"token": token, "h": h_o, "c": c_o})
            worst = max(worst, float(np.abs(logits_o - logits_t.numpy()).max()))
            np.testing.assert_allclose(h_o, h_t.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(c_o, c_t.numpy(), rtol=1e-5, atol=1e-5)
    assert worst <= 1e-4


def test_graph_contract(tiny_onnx, tiny_run):
    proto = onnx.load(str(tiny_onnx))
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(inputs) == ["token", "h", "c"] and list(outputs) == ["logits", "h_out", "c_out"]

    def dims(tensor_type):
        return [d.dim_param or d.dim_value for d in tensor_type.shape.dim]

    assert inputs["token"].elem_type == onnx.TensorProto.INT64 and dims(inputs["token"]) == ["batch"]
    for name in ("h", "c"):
        assert inputs[name].elem_type == onnx.TensorProto.FLOAT and dims(inputs[name]) == [2, "batch", 48]
    for name in ("h_out", "c_out"):
        assert dims(outputs[name]) == [2, "batch", 48]
    vocab = len(load_checkpoint(tiny_run / "ckpt.pt")["vocab"])
    assert outputs["logits"].elem_type == onnx.TensorProto.FLOAT and dims(outputs["logits"]) == ["batch", vocab]
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= {
        "Gather",
        "MatMul",
        "Add",
        "Split",
        "Sigmoid",
        "Tanh",
        "Mul",
        "Unsqueeze",
        "Concat",
        "Squeeze",
        "Slice",
        "Reshape",
        "Transpose",
        "Constant",
    }, ops
    assert "LSTM" not in ops
    # one self-contained file: weights inside, nothing beside it
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert not list(tiny_run.glob("*.data"))
    table = [init for init in proto.graph.initializer if list(init.dims) == [vocab, 4 * 48]]
    assert table, "the embedding and first input projection are folded into one (vocab, 4H) table"


def test_metadata_round_trip(tiny_onnx, tiny_run):
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["format"] == "charlstm-cell/1"
    assert json.loads(meta["vocab"]) == ckpt["vocab"]
    assert json.loads(meta["config"]) == ckpt["config"]
    assert int(meta["step"]) == ckpt["step"] == 40
    assert float(meta["val_loss"]) == pytest.approx(ckpt["val_loss"])


def test_export_reports_its_checks(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert export_main([str(tiny_run / "best.pt"), "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}" in report
    assert "onnx.checker: ok" in report
    assert "parity with PyTorch step over 200 chars" in report and "at batch 4" in report
    assert "greedy 500 chars: identical to PyTorch" in report
    assert "verified on the validation split of" in report


def test_unicode_vocabulary(spanish_onnx):
    meta = ort.InferenceSession(str(spanish_onnx)).get_modelmeta().custom_metadata_map
    vocab = json.loads(meta["vocab"])
    for ch in ("ñ", "¿", "¡", "á", "é", "ó", "ú", "🙂", "—"):
        assert ch in vocab, ch
    assert all(len(ch) == 1 for ch in vocab)


def test_int8(trained_run, trained_onnx, tmp_path, capsys, corpus_100k):
    out = tmp_path / "m.int8.onnx"
    ckpt = str(trained_run / "ckpt.pt")
    assert export_main([ckpt, "--int8", "-o", str(out), "--eval-text", str(corpus_100k)]) == 0
    report = capsys.readouterr().out
    line = next(x for x in report.splitlines() if x.startswith("int8:"))
    change = float(line.split("(")[1].split("%")[0])
    assert change <= 2.0
    fp32_size = trained_onnx.stat().st_size
    assert out.stat().st_size < 0.6 * fp32_size  # matrices in int8; the small (V, 4H) table and biases stay fp32
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert meta["format"] == "charlstm-cell/1"

    # a limit just under the measured change: refused in one line, and the file already there is kept
    before = out.read_bytes()
    limit = f"{change - 0.01:.2f}"
    assert export_main([ckpt, "--int8", "-o", str(out), "--eval-text", str(corpus_100k), "--int8-limit", limit]) == 2
    assert f"over --int8-limit {float(limit):g}%" in one_line_error(capsys.readouterr().err)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]  # no temp files left


def test_reads_a_bf16_checkpoint(corpus_100k, tmp_path):
    """A checkpoint trained in bf16 exports, samples and scores, here and on a CPU without native bf16."""
    from helpers import run_cli

    from trainer.dist.precision import cpu_runs_bf16_lstm

    if not cpu_runs_bf16_lstm():
        pytest.skip("this CPU cannot train in bf16 (no AVX-512 BF16 or AMX in oneDNN)")
    args = [f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.mixed_precision=bf16", "train.max_steps=5"]
    assert run_train(*args) == 0
    assert export_main([str(tmp_path / "ckpt.pt")]) == 0
    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    exported = run_cli("-m", "export.onnx", str(tmp_path / "ckpt.pt"), "-o", str(tmp_path / "avx2.onnx"), env=avx2)
    assert exported.returncode == 0, exported.stderr
    sampled = run_cli("-m", "serve.sample", str(tmp_path / "avx2.onnx"), "--prime", "The", "--top-k", "1", env=avx2)
    assert sampled.returncode == 0 and sampled.stdout.startswith("The")
    scored = run_cli("-m", "serve.score", str(tmp_path / "avx2.onnx"), str(corpus_100k), "--quiet", env=avx2)
    assert scored.returncode == 0 and "nats/char" in scored.stdout


def test_exports_a_checkpoint_with_training_keys_of_another_version(tiny_run, tmp_path, corpus_100k):
    """Training keys come and go between versions; the model section alone decides the network."""
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    ckpt["config"]["train"]["compile"] = True  # a key an older version had
    del ckpt["config"]["train"]["ema_decay"]  # a key it did not have yet
    torch.save(ckpt, tmp_path / "old.pt")
    assert export_main([str(tmp_path / "old.pt"), "--eval-text", str(corpus_100k)]) == 0
    assert (tmp_path / "old.onnx").is_file()


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/charlstm-test-pickle-executed"


def test_bad_checkpoints(tmp_path, tiny_run, capsys):
    cases = {}
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint")
    cases["garbage.pt"] = "not a charlstm checkpoint"
    (tmp_path / "text.pt").write_text("hi\n")  # the unpickler fails with a KeyError on these bytes
    cases["text.pt"] = "not a charlstm checkpoint (unreadable or truncated: KeyError"
    torch.save({"model": {}, "vocab": ["a"]}, tmp_path / "partial.pt")
    cases["partial.pt"] = "missing keys: config, step, val_loss"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    cases["evil.pt"] = "refused to load: it holds pickled Python objects"
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases["list.pt"] = "not a charlstm checkpoint"
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    ckpt["model"] = {k: v[..., :3] if v.dim() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "shapes.pt")
    cases["shapes.pt"] = "the weights do not fit the checkpoint's config"
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    ckpt["config"]["model"]["attention_heads"] = 4  # a model option this version cannot build
    torch.save(ckpt, tmp_path / "future.pt")
    cases["future.pt"] = "model config is not one this charlstm can build (unknown config key 'model.attention_heads'"
    ckpt["config"].pop("model")
    torch.save(ckpt, tmp_path / "no_model_config.pt")
    cases["no_model_config.pt"] = "the checkpoint's config has no model section"
    cases["missing.pt"] = "does not exist"
    if os.path.exists(MARKER):
        os.remove(MARKER)
    for name, message in cases.items():
        assert export_main([str(tmp_path / name)]) == 2, name
        assert message in one_line_error(capsys.readouterr().err), name
        assert not (tmp_path / name).with_suffix(".onnx").exists()
    assert not os.path.exists(MARKER), "the pickle payload was executed"


def test_bad_output_paths(tiny_run, tmp_path, capsys):
    assert export_main([str(tiny_run / "ckpt.pt"), "-o", str(tmp_path / "no" / "such" / "m.onnx")]) == 2
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    assert export_main([str(tiny_run / "ckpt.pt"), "-o", str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--opset", "17"], "--opset 17: the exporter writes opsets 18 to"),  # it would fall back to 18 unsaid
        (["--opset", "5"], "--opset 5: the exporter writes opsets 18 to"),
        (["--opset", "99"], "--opset 99: the exporter writes opsets 18 to"),
        (["--int8", "--int8-limit", "nan"], "--int8-limit must be a number of percent, got nan"),
    ],
)
def test_bad_export_options(tiny_run, tmp_path, capsys, args, message):
    out = tmp_path / "m.onnx"
    assert export_main([str(tiny_run / "ckpt.pt"), "-o", str(out), *args]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_the_opset_asked_for_is_the_opset_written(tiny_run, tmp_path):
    assert export_main([str(tiny_run / "ckpt.pt"), "-o", str(tmp_path / "m.onnx"), "--opset", "19"]) == 0
    assert export_onnx.written_opset(onnx.load(str(tmp_path / "m.onnx"))) == 19


def test_failed_verification_leaves_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an older export that must survive")
    monkeypatch.setattr(export_verify, "PARITY_TOLERANCE", -1.0)  # no export can pass this
    assert export_main([str(tiny_run / "ckpt.pt"), "-o", str(out)]) == 2
    assert "export failed verification" in one_line_error(capsys.readouterr().err)
    assert out.read_bytes() == b"an older export that must survive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp files left


def test_greedy_self_check_catches_a_diverging_model(trained_run, trained_onnx, corpus_100k, monkeypatch):
    """The greedy check on its own: a PyTorch model whose head favours one character more than the exported
    file's does picks other characters, and verify names where (parity is switched off to reach it)."""
    model, ckpt = torch_model(trained_run)
    with torch.no_grad():
        model.head.bias[ckpt["vocab"].index("e")] += 3.0
    monkeypatch.setattr(export_verify, "PARITY_TOLERANCE", float("inf"))
    text = corpus_100k.read_text(encoding="utf-8")[:5000]
    with pytest.raises(export_onnx.UserError, match="greedy text differs from PyTorch at character"):
        export_verify.verify(trained_onnx, model, ckpt["vocab"], text)
    model, _ = torch_model(trained_run)
    assert "greedy 500 chars: identical to PyTorch" in export_verify.verify(trained_onnx, model, ckpt["vocab"], text)


def test_spanish_corpus_present():
    assert "ñ" in SPANISH.read_text(encoding="utf-8")
