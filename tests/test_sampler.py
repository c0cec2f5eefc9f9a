import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import ROOT, one_line_error, run_cli

from export.onnx import model_from_checkpoint
from serve import Sampler, SamplerError
from serve.format import FORMAT
from serve.sample import main as sample_main
from serve.sample import sample
from serve.score import main as score_main
from serve.score import score
from trainer.checkpoint import load_checkpoint
from trainer.data import load_corpus, split


def torch_greedy(run_dir, prime: str, length: int) -> str:
    """The PyTorch model's argmax path, one step() per character."""
    ckpt = load_checkpoint(run_dir / "ckpt.pt")
    model = model_from_checkpoint(ckpt, run_dir / "ckpt.pt")
    index = {ch: i for i, ch in enumerate(ckpt["vocab"])}
    h, c = model.zero_state(1)
    out = []
    with torch.no_grad():
        for ch in prime:
            logits, h, c = model.step(torch.tensor([index[ch]]), h, c)
        for _ in range(length):
            token = int(logits.argmax())
            out.append(ckpt["vocab"][token])
            logits, h, c = model.step(torch.tensor([token]), h, c)
    return "".join(out)


def test_greedy_equals_pytorch_argmax_path(trained_run, trained_onnx):
    sampler = Sampler(trained_onnx)
    expected = torch_greedy(trained_run, "ROMEO:\n", 300)
    assert sampler.generate("ROMEO:\n", 300, top_k=1) == expected
    assert sampler.generate("ROMEO:\n", 300, temperature=0) == expected


def test_same_seed_same_text(trained_onnx):
    sampler = Sampler(trained_onnx)
    a = sampler.generate("The ", 200, top_k=10, temperature=1.0, seed=7)
    assert a == sampler.generate("The ", 200, top_k=10, temperature=1.0, seed=7)
    assert a != sampler.generate("The ", 200, top_k=10, temperature=1.0, seed=8)
    assert "".join(sampler.stream("The ", 200, top_k=10, seed=7)) == a


def test_batched_greedy_equals_one_by_one(trained_onnx):
    sampler = Sampler(trained_onnx)
    single = sampler.generate("KING", 150, top_k=1)
    assert sampler.generate("KING", 150, top_k=1, num_samples=5) == [single] * 5
    varied = sampler.generate("KING", 150, top_k=20, seed=1, num_samples=3)
    assert len(set(varied)) == 3  # samples in a batch draw independently


def pick(logits, top_k, temperature, top_p, rng):
    """Sampler.pick with one uniform draw per row from rng."""
    return Sampler.pick(logits, top_k, temperature, top_p, rng.random(len(logits)))


def test_top_k_never_picks_outside_the_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 30)).astype(np.float32)
    for k in (1, 3, 10):
        picked = pick(logits, k, 1.0, None, rng)
        top = np.argsort(-logits, axis=1)[:, :k]
        assert all(p in row for p, row in zip(picked, top))
    picked = pick(logits, 3, 1.0, None, rng)
    assert len(set(picked[logits.argmax(axis=1) != picked])) > 1  # not just greedy


def test_top_p_keeps_the_nucleus():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 30)).astype(np.float32) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    picked = pick(logits, None, 1.0, 0.5, rng)
    for row, p in zip(probs, picked):
        order = np.argsort(-row)
        size = int(np.searchsorted(np.cumsum(row[order]), 0.5) + 1)  # smallest set with mass >= 0.5
        assert p in order[:size]
    # within the nucleus, the draw follows the renormalized softmax (a greedy pick would put all on the first)
    row = np.array([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]], dtype=np.float32)
    p = np.exp(row[0]) / np.exp(row[0]).sum()  # 0.43, 0.26, 0.16, 0.06, ...: top-p 0.8 keeps the first three
    nucleus = p[:3] / p[:3].sum()
    counts = np.bincount(pick(np.tile(row, (20000, 1)), None, 1.0, 0.8, rng), minlength=6)
    np.testing.assert_allclose(counts / 20000, [*nucleus, 0, 0, 0], atol=0.015)
    counts = np.bincount(pick(np.tile(logits[:1], (20000, 1)), None, 1.0, None, rng), minlength=30)
    np.testing.assert_allclose(counts / 20000, probs[0], atol=0.015)  # a plain draw follows the softmax


def test_serve_does_not_import_torch(trained_onnx):
    code = (
        "import sys; from serve import Sampler; from serve.score import score; import serve.http.app, serve.inspect; "
        f"s = Sampler({str(trained_onnx)!r}); s.generate('The ', 50, top_k=5, seed=0); score(s, 'The king is here.'); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    for path in (ROOT / "serve").rglob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "from trainer" not in source, path


def test_score_agrees_with_the_trainer(trained_run, trained_onnx, tmp_path):
    ckpt = load_checkpoint(trained_run / "ckpt.pt")
    corpus = load_corpus(ckpt["config"]["data"]["path"])
    _, val = split(corpus.ids, ckpt["config"]["data"]["val_fraction"])
    val_file = tmp_path / "val.txt"
    val_file.write_text(corpus.decode(np.asarray(val)), encoding="utf-8")
    loss = score(Sampler(trained_onnx), val_file.read_text(encoding="utf-8"))
    assert loss == pytest.approx(ckpt["val_loss"], abs=1e-5)  # fp32 rounding only; 4 streams instead of 16: 1e-3
    result = run_cli("-m", "serve.score", str(trained_onnx), str(val_file), "--quiet")
    assert result.returncode == 0, result.stderr
    nats, bpc = float(result.stdout.split()[0]), float(result.stdout.split()[2])
    assert nats == pytest.approx(loss, abs=1e-6) and bpc == pytest.approx(loss / math.log(2), abs=1e-6)
    events = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    val_chars = [e["val_chars"] for e in events if "val_chars" in e][-1]  # what the trainer read
    assert f"({val_chars:,} characters predicted of {len(val):,}, " in result.stdout


def test_score_agrees_with_the_trainer_on_a_bounded_part(trained_run, trained_onnx, tmp_path):
    """`serve.score --max-chars N` scores the part of a text that an evaluation with train.eval_chars=N scores
    (each stream's first N // B characters), and agrees with the trainer's loss on it."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from trainer.data import EvalStreams
    from trainer.evaluate import evaluate_loss

    ckpt = load_checkpoint(trained_run / "ckpt.pt")
    model = model_from_checkpoint(ckpt, trained_run / "ckpt.pt")
    corpus = load_corpus(ckpt["config"]["data"]["path"])
    _, val = split(corpus.ids, ckpt["config"]["data"]["val_fraction"])
    batch, seq_len = ckpt["config"]["train"]["batch_size"], ckpt["config"]["train"]["seq_len"]
    one_process = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext, reduce=lambda sums, reduction: sums)
    trainer_loss, chars = evaluate_loss(model, EvalStreams(val, batch, seq_len, 4_000), 0, batch, one_process)
    assert chars == 4_000 < len(val) - 1
    text = corpus.decode(np.asarray(val))
    bounded = score(Sampler(trained_onnx), text, max_chars=4_000)
    assert bounded == pytest.approx(trainer_loss, abs=1e-5)
    assert abs(bounded - score(Sampler(trained_onnx), text)) > 1e-3  # another part than the whole split
    val_file = tmp_path / "val.txt"
    val_file.write_text(text, encoding="utf-8")
    result = run_cli("-m", "serve.score", str(trained_onnx), str(val_file), "--max-chars", "4000", "--quiet")
    assert result.returncode == 0 and float(result.stdout.split()[0]) == pytest.approx(bounded, abs=1e-6)
    assert f"(4,000 characters predicted of {len(text):,}, " in result.stdout
    short = run_cli("-m", "serve.score", str(trained_onnx), str(val_file), "--max-chars", "3")
    assert short.returncode == 2 and "max_chars must be at least the number of streams (16)" in one_line_error(
        short.stderr
    )


def test_cli_streams_prime_and_text(trained_onnx):
    result = run_cli("-m", "serve.sample", str(trained_onnx), "--prime", "ROMEO:", "--length", "100", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ROMEO:" + Sampler(trained_onnx).generate("ROMEO:", 100, top_k=1) + "\n"
    result = run_cli(
        "-m",
        "serve.sample",
        str(trained_onnx),
        "--prime",
        "A",
        "--length",
        "20",
        "--num-samples",
        "2",
        "--top-k",
        "5",
        "--seed",
        "3",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
    )
    assert result.returncode == 0 and result.stdout.count("--- sample") == 2


def test_the_seeds_own_call_on_a_spanish_model(spanish_onnx):
    """The seed: sample(net, 1000, prime='El libro empieza años', top_k=5)."""
    net = Sampler(spanish_onnx)
    text = sample(net, 1000, prime="El libro empieza años", top_k=5)
    assert text.startswith("El libro empieza años") and len(text) == len("El libro empieza años") + 1000
    assert set(text) <= set(net.vocab)
    assert net.generate("¿Quién? ñ 🙂", 50, top_k=1) == net.generate("¿Quién? ñ 🙂", 50, top_k=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prime", "hello ☃ ☂"], "characters the model does not know: '☂' (U+2602), '☃' (U+2603)"),
        (["--top-k", "0"], "top_k must be between 1 and the vocabulary size"),
        (["--top-k", "1000"], "top_k must be between 1 and the vocabulary size"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--length", "-5"], "length must be an integer >= 0"),
        (["--num-samples", "0"], "num_samples must be an integer >= 1"),
        (["--prime-file", "/nonexistent/prime.txt"], "does not exist"),
        (["--threads", "0"], "threads must be an integer >= 1"),
    ],
)
def test_bad_sampling_options(trained_onnx, args, message, capsys):
    assert sample_main([str(trained_onnx), *args]) == 2
    captured = capsys.readouterr()
    assert message in one_line_error(captured.err)
    assert captured.out == ""  # nothing printed before the check


def test_unknown_skip_drops_characters(trained_onnx, capsys):
    args = ["--prime", "ROMEO☃:", "--unknown", "skip", "--length", "60", "--top-k", "1"]
    assert sample_main([str(trained_onnx), *args]) == 0
    skipped = Sampler(trained_onnx).generate("ROMEO:", 60, top_k=1)  # what the model does with the snowman gone
    assert capsys.readouterr().out == "ROMEO☃:" + skipped + "\n"


def test_bad_models(tmp_path, capsys):
    (tmp_path / "garbage.onnx").write_bytes(b"definitely not protobuf \xff\xfe")
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "plain.onnx"))
    for name, message in [
        ("missing.onnx", "does not exist"),
        ("garbage.onnx", "not a valid ONNX model"),
        ("plain.onnx", "not a charlstm model"),
    ]:
        assert sample_main([str(tmp_path / name), "--prime", "a"]) == 2
        assert message in one_line_error(capsys.readouterr().err)
        assert score_main([str(tmp_path / name), str(tmp_path / "garbage.onnx")]) == 2
        assert message in one_line_error(capsys.readouterr().err)


def test_cuda_without_a_gpu_is_an_error(trained_onnx, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    assert sample_main([str(trained_onnx), "--device", "cuda"]) == 2
    assert "device cuda" in one_line_error(capsys.readouterr().err)
    with pytest.raises(SamplerError):
        Sampler(trained_onnx, device="cuda")


def test_score_bad_text(trained_onnx, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert score_main([str(trained_onnx), str(tmp_path / "latin1.txt")]) == 2
    assert "not UTF-8 text" in one_line_error(capsys.readouterr().err)
    (tmp_path / "one.txt").write_text("a")
    assert score_main([str(trained_onnx), str(tmp_path / "one.txt")]) == 2
    assert "at least 2" in one_line_error(capsys.readouterr().err)
    (tmp_path / "two.txt").write_text("ROMEO:")
    assert score_main([str(trained_onnx), str(tmp_path / "two.txt"), "--streams", "0"]) == 2  # not the default
    assert "streams must be >= 1, got 0" in one_line_error(capsys.readouterr().err)
    (tmp_path / "snow.txt").write_text("snow \u2603 here")
    assert score_main([str(trained_onnx), str(tmp_path / "snow.txt")]) == 2
    assert f"{tmp_path / 'snow.txt'} has characters the model does not know" in one_line_error(capsys.readouterr().err)


JS = ROOT / "serve" / "js"


def test_javascript_greedy_equals_python(trained_onnx, spanish_onnx):
    if shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and serve/js/node_modules are required in CI (.ci/run installs them)")
        pytest.skip("node or onnxruntime-node not installed (cd serve/js && npm install)")
    for model, prime in ((trained_onnx, "ROMEO:"), (spanish_onnx, "El libro empieza años ¿ñ 🙂")):
        result = subprocess.run(
            ["node", str(JS / "sample.js"), str(model), "--prime", prime, "--length", "300", "--top-k", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == prime + Sampler(model).generate(prime, 300, top_k=1) + "\n"
    seeded = [
        subprocess.run(
            [
                "node",
                str(JS / "sample.js"),
                str(trained_onnx),
                "--prime",
                "A",
                "--length",
                "80",
                "--top-k",
                "5",
                "--seed",
                "4",
            ],
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1] and len(seeded[0]) == 82
    bad = subprocess.run(
        ["node", str(JS / "sample.js"), str(trained_onnx), "--prime", "☃"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "does not know: '☃' (U+2603)" in one_line_error(bad.stderr)
    bad = subprocess.run(
        ["node", str(JS / "sample.js"), str(trained_onnx), "--threads", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "threads must be an integer >= 1" in one_line_error(bad.stderr)
    meta = json.loads(
        subprocess.run(
            [
                "node",
                "--input-type=module",
                "-e",
                "import { readFileSync } from 'node:fs'; import { describeModel } from './core.js';"
                "const info = describeModel(new Uint8Array(readFileSync(process.argv[1])));"
                "console.log(JSON.stringify({ vocab: info.vocab, step: info.step, valLoss: info.valLoss }));",
                str(trained_onnx),
            ],
            cwd=JS,
            capture_output=True,
            text=True,
        ).stdout
    )
    sampler = Sampler(trained_onnx)
    assert meta == {
        "vocab": sampler.vocab,
        "step": int(sampler.metadata["step"]),
        "valLoss": float(sampler.metadata["val_loss"]),
    }


def test_javascript_core_uses_no_node_api():
    """serve/js/core.js and its modules are shared by Node and the browser: ES modules with no fs, Buffer,
    require or process (the loaders, node.js and serve/web/app.js, bring the file's bytes and onnxruntime),
    importing only each other, every one of them served to the page."""
    from serve.web.__main__ import CORE_FILES

    for name in CORE_FILES:
        source = (JS / name).read_text(encoding="utf-8")
        code = "\n".join(line.split("//")[0] for line in source.splitlines())  # comments may name them
        for api in ("require(", "Buffer", "process.", "from 'fs'", "from 'node:", "import("):
            assert api not in code, (name, api)
        for imported in re.findall(r"^(?:import|export) .*? from '([^']+)';", code, flags=re.M | re.S):
            assert imported.startswith("./") and imported[2:] in CORE_FILES, (name, imported)


def test_javascript_core_checks_the_format_name_export_writes():
    """serve/js/core.js's FORMAT is serve/format.py's (which export/onnx.py writes): one name in both languages."""
    source = (JS / "core.js").read_text(encoding="utf-8")
    assert re.findall(r"^export const FORMAT = '([^']*)';", source, flags=re.M) == [FORMAT]


def test_stream_checks_before_the_first_character(trained_onnx):
    with pytest.raises(SamplerError, match="top_k"):
        Sampler(trained_onnx).stream("A", 10, top_k=0)  # raised at the call, not at the first next()


def test_javascript_logits_equal_python(trained_onnx, corpus_100k):
    """Node's onnxruntime and Python's run the same file: the logits along 300 characters of text agree to
    1e-4 (the two runtimes are separate builds; the export's own parity limit is the same 1e-4)."""
    if shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and serve/js/node_modules are required in CI (.ci/run installs them)")
        pytest.skip("node or onnxruntime-node not installed (cd serve/js && npm install)")
    text = corpus_100k.read_text(encoding="utf-8")[1000:1300]
    script = """
import ort from 'onnxruntime-node';
import { loadSampler } from './node.js';
(async () => {
  const [model, text] = process.argv.slice(1);
  const s = await loadSampler(model);
  const shape = [s.layers, 1, s.hidden];
  let h = new ort.Tensor('float32', new Float32Array(s.layers * s.hidden), shape);
  let c = new ort.Tensor('float32', new Float32Array(s.layers * s.hidden), shape);
  const rows = [];
  for (const id of s.encode(text)) {
    const out = await s.session.run({ token: new ort.Tensor('int64', BigInt64Array.from([BigInt(id)]), [1]), h, c });
    h = out.h_out; c = out.c_out;
    rows.push(Array.from(out.logits.data));
  }
  process.stdout.write(JSON.stringify(rows));
})();
"""
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script, str(trained_onnx), text], cwd=JS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    js = np.array(json.loads(result.stdout), dtype=np.float64)
    sampler = Sampler(trained_onnx, device="cpu")
    run = sampler.runner(1)
    python = np.array([run(np.array([i])).copy()[0] for i in sampler.encode(text)], dtype=np.float64)
    assert js.shape == python.shape == (300, len(sampler.vocab))
    assert np.abs(js - python).max() <= 1e-4


def test_the_draws_are_the_documented_generator():
    """SplitMix64's finalizer of (seed, sample, position): fixed numbers, so that another runtime can check
    itself against them (serve/js/core.js is checked in test_javascript_seeded_text_equals_python)."""
    from serve.sampler import uniform

    assert uniform(7, 0, 0) == 0.3898297483912715
    assert uniform(7, 1, 0) == 0.9237001069304558
    assert uniform(7, 0, 1) == 0.40162233062649344
    draws = np.array([uniform(1, 0, t) for t in range(20000)])
    assert 0 <= draws.min() and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.01


@pytest.mark.parametrize("rows", [1, 15, 16, 3000])
def test_the_array_draws_are_the_documented_generator_bitwise(rows):
    """`draws` (a call per row for a few rows, numpy's uint64 arithmetic for many) gives exactly `uniform`'s
    numbers, for 64-bit seeds at both ends, large sample indices and positions."""
    import random

    from serve.pick import draws, uniform, uniforms

    rng = random.Random(rows)
    seeds = [rng.choice([0, 1, 2**64 - 1, rng.getrandbits(64), rng.getrandbits(20)]) for _ in range(rows)]
    samples = [rng.randrange(0, 1 << 20) for _ in range(rows)]
    positions = [rng.randrange(0, 1 << 30) for _ in range(rows)]
    expected = [uniform(s, i, p) for s, i, p in zip(seeds, samples, positions)]
    assert draws(seeds, samples, positions).tolist() == expected
    as_arrays = uniforms(np.array(seeds, dtype=np.uint64), np.array(samples), np.array(positions))
    assert as_arrays.tolist() == expected


@pytest.mark.parametrize(
    "options",
    [
        ["--top-k", "5", "--temperature", "0.8", "--seed", "7"],
        ["--top-p", "0.9", "--seed", "3"],
        ["--top-k", "10", "--temperature", "1.3", "--top-p", "0.95", "--seed", "11", "--num-samples", "3"],
    ],
)
def test_javascript_seeded_text_equals_python(trained_onnx, options):
    """The same seed and options give the same 500 characters in Node.js and in Python: one generator, one pick
    procedure (docs/serving.md)."""
    if shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and serve/js/node_modules are required in CI (.ci/run installs them)")
        pytest.skip("node or onnxruntime-node not installed (cd serve/js && npm install)")
    args = [str(trained_onnx), "--prime", "The ", "--length", "500", *options]
    node = subprocess.run(["node", str(JS / "sample.js"), *args], capture_output=True, text=True, timeout=300)
    python = run_cli("-m", "serve.sample", *args)
    assert node.returncode == 0 and python.returncode == 0, node.stderr + python.stderr
    assert node.stdout == python.stdout
    assert len(python.stdout) >= 500
