import hashlib
import json
import math
import signal
import time

import pytest
import torch
import yaml
from helpers import (
    EMPTY_CONFIG,
    ROOT,
    TINY,
    TRAINED_BAR,
    assert_resumed,
    one_line_error,
    run_cli,
    run_train,
    start_events,
)

from trainer.checkpoint import load_checkpoint
from trainer.dist.precision import cpu_runs_bf16_lstm


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def close_relative(x: torch.Tensor, y: torch.Tensor, rel: float = 1e-4) -> bool:
    """Equal within rel of the tensor's largest magnitude: a fixed atol would compare nothing for Adam's second
    moments, 99% of which are below 1e-8."""
    return bool((x - y).abs().max() <= rel * x.abs().max().clamp_min(1e-30))


def assert_same_training_state(a, b, exact=True):
    """Weights, optimizer moments and carried stream state of two checkpoints."""
    assert a["step"] == b["step"]
    check = torch.equal if exact else close_relative
    assert ("train_weights" in a) == ("train_weights" in b)
    for weights in ("model", "train_weights") if "train_weights" in a else ("model",):
        for key in a[weights]:
            assert check(a[weights][key], b[weights][key]), (weights, key)
    for index, moments in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert check(moments[key], b["optimizer"]["state"][index][key]), (index, key)
    for key in ("h", "c"):
        assert check(a["streams"][key], b["streams"][key]), key


def test_run_directory_contents(tiny_run):
    for name in ("ckpt.pt", "best.pt", "metrics.jsonl", "config.yaml", "loss.png"):
        assert (tiny_run / name).is_file(), name
    events = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in e for e in events)
    train_events = [e for e in events if "train_loss" in e]
    assert train_events and all(e["chars_per_s"] > 0 and math.isfinite(e["train_loss"]) for e in train_events)
    val_events = [e for e in events if "val_loss" in e]
    assert [e["step"] for e in val_events] == [20, 40]
    assert val_events[-1]["val_bpc"] == pytest.approx(val_events[-1]["val_loss"] / math.log(2))
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["model"]["hidden"] == 48 and config["train"]["max_steps"] == 40
    ckpt = torch.load(tiny_run / "ckpt.pt", weights_only=True)  # the checkpoint contract (README)
    assert {"model", "vocab", "config", "step", "val_loss"} <= set(ckpt)
    assert ckpt["step"] == 40 and ckpt["val_loss"] == pytest.approx(val_events[-1]["val_loss"])
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["streams"]["h"].shape == (8, 2, 48)  # (B, L, H): every stream's carried state
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    assert best["val_loss"] == min(e["val_loss"] for e in val_events)


def test_loss_falls_on_english(trained_run):
    """The fixture model of the parity tests (helpers.TRAINED, 400 steps on the English text) ends under
    TRAINED_BAR nats (a unigram model scores 3.24; 2.21 was measured when this test was written), and its
    validation loss fell from one evaluation to the next."""
    events = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in events if "val_loss" in e]
    assert len(val) == 2 and val[1] < val[0] < 3.0 and val[1] < TRAINED_BAR


def stop_after(monkeypatch, steps: int) -> None:
    """Make the run behave as if SIGTERM arrived during step `steps` (the loop polls once per step)."""
    import trainer.stopping
    import trainer.train as train_module

    class StopLater(trainer.stopping.StopFlags):
        polls = 0

        def install(self):
            pass

        @property
        def signal_name(self):
            StopLater.polls += 1
            return "SIGTERM" if StopLater.polls >= steps else None

        @signal_name.setter
        def signal_name(self, value):
            pass

    monkeypatch.setattr(train_module, "StopFlags", StopLater)


@pytest.mark.parametrize(
    "regularizers",
    [
        ["model.dropout=0.3", "train.state_reset=0"],
        ["model.dropout=0.2", "model.weight_drop=0.3", "train.ema_decay=0.95", "train.state_reset=0.2"],
        ["train.input_noise=0.1", "train.activation_reg=1", "train.temporal_reg=1", "train.state_reset=0"],
    ],
)
def test_resume_is_bitwise_equal(corpus_100k, tmp_path, monkeypatch, regularizers):
    """One process, CPU, fp32, dropout on: stopped after 17 steps, rerun to 30 == 30 uninterrupted; also
    with weight drop, the weight average and state resets, and with input noise and AR/TAR."""
    common = [
        f"data.path={corpus_100k}",
        *regularizers,
        "train.max_steps=30",
        "train.save_every=10",
        "train.eval_every=10",
        "train.batch_size=6",
        "train.seq_len=24",
    ]
    assert run_train(*common, f"out_dir={tmp_path / 'straight'}") == 0
    with monkeypatch.context() as patch:
        stop_after(patch, 17)
        assert run_train(*common, f"out_dir={tmp_path / 'resumed'}") == 0
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 17
    assert run_train(*common, f"out_dir={tmp_path / 'resumed'}") == 0
    assert_resumed(tmp_path / "resumed", 17)
    straight = load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert_same_training_state(straight, resumed, exact=True)
    assert straight["val_loss"] == resumed["val_loss"]


def validation_loss(ckpt, cfg) -> float:
    """The checkpoint's `model` weights on the validation split, read the way the trainer reads it."""
    from trainer.data import EvalStreams, load_corpus, split
    from trainer.model import build_model

    model = build_model(len(ckpt["vocab"]), cfg.model)
    model.load_state_dict(ckpt["model"])
    model.eval()
    _, val_ids = split(load_corpus(cfg.data.path).ids, cfg.data.val_fraction)
    state, total, count = None, 0.0, 0
    with torch.no_grad():
        for x, y in EvalStreams(val_ids, cfg.train.batch_size, cfg.train.seq_len).windows(0, cfg.train.batch_size):
            logits, state = model(torch.from_numpy(x), state)
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), torch.from_numpy(y).flatten(), reduction="sum"
            )
            count += y.size
    return float(total) / count


def test_weight_average_is_what_gets_evaluated_and_saved(corpus_100k, tmp_path):
    """train.ema_decay: after one step the average is 0.1 init + 0.9 weights (the decay ramps up from 0.1);
    "model" holds the average, "train_weights" what Adam updated, and val_loss is the average's loss."""
    from trainer.config import load_config
    from trainer.model import build_model

    overrides = [f"data.path={corpus_100k}", "train.ema_decay=0.99", "train.max_steps=1", "train.eval_every=1"]
    assert run_train(*overrides, f"out_dir={tmp_path / 'averaged'}") == 0
    assert run_train(*overrides, "train.ema_decay=0", f"out_dir={tmp_path / 'plain'}") == 0
    averaged = load_checkpoint(tmp_path / "averaged" / "ckpt.pt")
    plain = load_checkpoint(tmp_path / "plain" / "ckpt.pt")
    cfg = load_config(EMPTY_CONFIG, [*TINY, *overrides])
    torch.manual_seed(cfg.train.seed)
    init = build_model(len(averaged["vocab"]), cfg.model).state_dict()
    for key, weight in averaged["train_weights"].items():
        assert torch.equal(weight, plain["model"][key]), key  # the average does not touch training
        torch.testing.assert_close(averaged["model"][key], 0.1 * init[key] + 0.9 * weight, rtol=1e-6, atol=1e-7)
    assert averaged["val_loss"] != plain["val_loss"]
    assert validation_loss(averaged, cfg) == pytest.approx(averaged["val_loss"], rel=1e-6)
    best = load_checkpoint(tmp_path / "averaged" / "best.pt")
    assert best["model"]["head.bias"].equal(averaged["model"]["head.bias"])


def test_state_resets_zero_the_carried_state(corpus_100k, tmp_path):
    """With every stream reset before the window of step 2, the state carried out of step 2 is what that window
    gives from zeros with the weights of step 2; without resets it is not."""
    from trainer.config import load_config
    from trainer.data import TrainStreams, load_corpus, split
    from trainer.model import build_model
    from trainer.regularize import state_resets

    overrides = [f"data.path={corpus_100k}", "model.dropout=0", "train.eval_every=1", "train.save_every=1"]
    cfg = load_config(EMPTY_CONFIG, [*TINY, *overrides])
    train_ids, _ = split(load_corpus(cfg.data.path).ids, cfg.data.val_fraction)
    x, _ = TrainStreams(train_ids, cfg.train.batch_size, cfg.train.seq_len).window(2, 0, cfg.train.batch_size)
    every_stream = "train.state_reset=0.9999"
    assert state_resets(load_config(None, [every_stream]), 2, 0, cfg.train.batch_size).all()  # for this seed

    def state_out_of_step_2(out, reset: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert run_train(*overrides, reset, "train.max_steps=2", f"out_dir={out}") == 0
        weights = load_checkpoint(out / "ckpt.pt")["model"]
        assert run_train(*overrides, reset, "train.max_steps=3", f"out_dir={out}") == 0  # resumes: runs step 2
        assert_resumed(out, 2)
        model = build_model(len(load_checkpoint(out / "ckpt.pt")["vocab"]), cfg.model)
        model.load_state_dict(weights)
        with torch.no_grad():
            _, (h, c) = model(torch.from_numpy(x))  # from a zero state
        streams = load_checkpoint(out / "ckpt.pt")["streams"]
        return (streams["h"] - h.transpose(0, 1)).abs().max(), (streams["c"] - c.transpose(0, 1)).abs().max()

    assert max(state_out_of_step_2(tmp_path / "reset", every_stream)) < 1e-5
    assert min(state_out_of_step_2(tmp_path / "carried", "train.state_reset=0")) > 1e-3


def test_grad_accum_equals_the_unsplit_step(corpus_100k, tmp_path):
    common = [f"data.path={corpus_100k}", "model.dropout=0.2", "train.max_steps=8", "train.batch_size=8"]
    assert run_train(*common, f"out_dir={tmp_path / 'one'}") == 0
    assert run_train(*common, f"out_dir={tmp_path / 'four'}", "train.grad_accum=4") == 0
    assert_same_training_state(
        load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "four" / "ckpt.pt"), exact=False
    )


def test_bf16_trains(corpus_100k, tmp_path):
    if not cpu_runs_bf16_lstm():
        pytest.skip("this CPU cannot run the bf16 LSTM (no AVX-512 BF16 or AMX in oneDNN)")
    assert (
        run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.mixed_precision=bf16", "train.max_steps=10")
        == 0
    )
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())  # master weights stay fp32
    assert math.isfinite(ckpt["val_loss"])


AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}  # caps oneDNN at AVX2 kernels: no bf16 LSTM, as on many laptops and VMs


def quickstart(out_dir, *overrides: str, env: dict | None = None):
    """configs/tiny.yaml as shipped, for a few steps, in a process of its own."""
    steps = ["train.max_steps=3", "train.max_minutes=null", "train.eval_every=3", "train.save_every=3"]
    args = ["-m", "trainer.train", "--config", "configs/tiny.yaml", *steps, *overrides, f"out_dir={out_dir}"]
    return run_cli(*args, env=env)


@pytest.mark.parametrize("capped", [False, True], ids=["this CPU", "AVX2 cap"])
def test_quickstart_precision_auto(corpus_100k, tmp_path, capped):
    """auto picks bf16 where oneDNN runs the bf16 LSTM and fp32 where it cannot, says so first, and trains."""
    result = quickstart(tmp_path, f"data.path={corpus_100k}", env=AVX2 if capped else None)
    assert result.returncode == 0, result.stderr[-2000:]
    native = cpu_runs_bf16_lstm() and not capped
    expected = "bf16 (this CPU runs the bf16 LSTM natively)" if native else "no (this CPU has no native bf16)"
    assert result.stderr.splitlines()[0] == f"charlstm: precision auto -> {expected}"
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 3


def test_bf16_where_it_cannot_run_is_one_line(corpus_100k, tmp_path):
    probe = run_cli("-c", "from trainer.dist.precision import cpu_runs_bf16_lstm as f; print(f())", env=AVX2)
    if probe.stdout.strip() != "False":
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 does not take bf16 away on this CPU")
    result = quickstart(tmp_path / "run", f"data.path={corpus_100k}", "train.mixed_precision=bf16", env=AVX2)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "train.mixed_precision=bf16: this CPU cannot run the bf16 LSTM" in line and "auto or no" in line
    assert not (tmp_path / "run").exists()


def test_max_minutes_stops_with_eval_and_checkpoint(corpus_100k, tmp_path):
    assert (
        run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.max_minutes=0.0001", "train.max_steps=1000")
        == 0
    )
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert 1 <= ckpt["step"] < 1000 and ckpt["val_loss"] is not None  # stopped early, evaluated, saved


def test_non_finite_steps_are_skipped_then_stop(tiny_run, corpus_100k, tmp_path, capsys):
    """A checkpoint whose weights went NaN: every step is skipped, and after 10 in a row the run stops with one
    line, leaving the checkpoint as it was."""
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    ckpt["model"]["head.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "ckpt.pt")
    before = digest(tmp_path / "ckpt.pt")
    code = run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.max_steps=80")
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: 10 non-finite steps in a row at step 49")
    assert digest(tmp_path / "ckpt.pt") == before  # nothing with NaN was written
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "skipped" in e] == list(range(40, 50))


@pytest.mark.parametrize(
    ("scale", "overrides", "fault"),
    [
        (1e30, [], "(the sample met non-finite probabilities)"),
        (1e36, ["train.sample_chars=0"], "(the validation loss is inf)"),
    ],
    ids=["sample", "validation_loss"],
)
def test_a_model_whose_predictions_are_not_finite_ends_the_run(
    scale, overrides, fault, tiny_run, corpus_100k, tmp_path, capsys
):
    """Weights grown huge but still finite, as a diverging run leaves them (train.lr=1e30, before it was bounded,
    did: 1e31 by step 20). At 1e30 the fused LSTM kernels still give a finite loss while the written-out cell
    that samples overflows to NaN; at 1e36 the validation loss is inf. Either ends the run at the evaluation with
    one line, before anything of that step is logged or saved (the save would take them: the weights are finite)."""
    ckpt = load_checkpoint(tiny_run / "ckpt.pt")
    ckpt["model"] = {key: value * scale for key, value in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    before = digest(tmp_path / "ckpt.pt")
    code = run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.max_steps=41", *overrides)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the model's predictions are not finite at step 41 " + fault), line
    assert line.endswith("lower train.lr or use train.mixed_precision=no; nothing from step 41 was saved")
    assert digest(tmp_path / "ckpt.pt") == before and not (tmp_path / "best.pt").exists()
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not [e for e in events if "val_loss" in e]


def test_a_sample_that_failed_on_the_main_process_ends_every_process():
    """Only the main process samples: its verdict reaches the others through one all-reduce (faked here as
    another process's flag added), so that they end the run with it instead of waiting in a collective."""
    from types import SimpleNamespace

    from trainer.evaluate import prediction_fault

    def processes(other: float):
        reduce = lambda tensor, reduction: tensor + other  # noqa: E731
        return SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)

    sample_failed = "the sample met non-finite probabilities"
    assert prediction_fault(2.0, "", processes(1.0), sampled=True) == sample_failed  # a process that did not sample
    assert prediction_fault(2.0, None, processes(0.0), sampled=True) == sample_failed  # the main process
    assert prediction_fault(2.0, "text", processes(0.0), sampled=True) is None
    assert prediction_fault(math.nan, "", processes(0.0), sampled=False) == "the validation loss is nan"


@pytest.mark.parametrize(
    ("setup", "overrides", "message"),
    [
        (None, ["data.path={tmp}/missing.txt"], "does not exist"),
        ("empty", ["data.path={tmp}/empty.txt"], "the file is empty"),
        ("latin1", ["data.path={tmp}/latin1.txt"], "not UTF-8 text (invalid byte 0xf1 at byte offset 4)"),
        ("short", ["data.path={tmp}/short.txt"], "needs at least 257"),
        (
            "short",
            ["data.path={tmp}/short.txt", "train.batch_size=2", "train.seq_len=8", "data.val_fraction=0.02"],
            "validation split has 2 characters, too few for 2 streams",
        ),
        (None, ["train.bogus=1"], "unknown config key 'train.bogus'"),
        (None, ["model.hidden=wide"], "config key 'model.hidden' must be an integer, got 'wide'"),
        (None, ["model.layers=0"], "'model.layers' must be > 0"),
        (None, ["train.seq_len=-1"], "'train.seq_len' must be > 0"),
        (None, ["train.lr=1e38"], "config key 'train.lr' must be in (0, 1], got 1e+38"),  # AdamW overflowed
        (None, ["train.mixed_precision=fp16"], "fp16 needs a CUDA GPU"),
        (None, ["train.grad_accum=3"], "grad_accum"),
        (None, ["train.sample_prime=☃"], "train.sample_prime has characters the corpus lacks: '☃'"),
    ],
)
def test_bad_input_is_one_line(setup, overrides, message, tmp_path, corpus_100k, capsys):
    if setup == "empty":
        (tmp_path / "empty.txt").write_bytes(b"")
    if setup == "latin1":
        (tmp_path / "latin1.txt").write_bytes("Espa\u00f1a".encode("latin-1"))
    if setup == "short":
        (tmp_path / "short.txt").write_text("To be, or not to be: that is the question.\n" * 3)
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if not any(o.startswith("data.path=") for o in overrides):
        overrides.append(f"data.path={corpus_100k}")
    assert run_train(*overrides, f"out_dir={tmp_path / 'run'}") == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_bad_input_through_the_real_cli(tmp_path):
    result = run_cli("-m", "trainer.train", "--config", str(EMPTY_CONFIG), "train.nope=3")
    assert result.returncode == 2
    assert "unknown config key 'train.nope'" in one_line_error(result.stderr)
    result = run_cli("-m", "trainer.train", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "not found" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("model.hidden=64", "model.hidden=48, this config says 64"),
        ("model.layers=3", "model.layers=2, this config says 3"),
        ("train.batch_size=4", "train.batch_size=8, this config says 4"),
        ("train.seq_len=16", "train.seq_len=32, this config says 16"),
        ("model.embed=8", "model.embed=16, this config says 8"),
        ("data.path={spanish}", "different vocabulary"),
        ("train.max_steps=10", "past train.max_steps=10"),
    ],
)
def test_mismatched_checkpoint_is_refused_and_kept(tiny_run, change, message, capsys, corpus_100k):
    from helpers import SPANISH

    before = {p.name: digest(p) for p in tiny_run.iterdir() if p.is_file()}
    code = run_train(f"data.path={corpus_100k}", f"out_dir={tiny_run}", change.replace("{spanish}", str(SPANISH)))
    assert code == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert {p.name: digest(p) for p in tiny_run.iterdir() if p.is_file()} == before


def test_damaged_checkpoint_is_refused(tmp_path, corpus_100k, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}") == 2
    assert "not a charlstm checkpoint" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "ckpt.pt").read_bytes() == b"not a checkpoint at all"


def test_configs_parse():
    from trainer.config import load_config

    for name in ("tiny", "shakespeare", "big"):
        load_config(ROOT / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("launcher", ["python", "accelerate launch"])
def test_script_entry_points(launcher, corpus_100k, tmp_path):
    """`python trainer/train.py ...` and the documented `accelerate launch trainer/train.py --config FILE ...`."""
    import subprocess
    import sys
    from pathlib import Path

    accelerate = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    prefix = [sys.executable] if launcher == "python" else accelerate
    args = [
        "trainer/train.py",
        "--config",
        str(EMPTY_CONFIG),
        *TINY,
        "train.max_steps=3",
        f"data.path={corpus_100k}",
        f"out_dir={tmp_path}",
    ]
    result = subprocess.run([*prefix, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 3


def test_unwritable_out_dir_is_one_line(corpus_100k, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path / 'a_file' / 'run'}") == 2
    assert "cannot be written" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_activation_penalties_shape_training_but_not_the_reported_loss(corpus_100k, tmp_path):
    """AR/TAR are added to what is minimized: the first step's reported loss (same weights, same window) is
    the plain cross-entropy, and the weights after that step differ; strong AR shrinks the top activations."""
    common = [f"data.path={corpus_100k}", "model.dropout=0", "train.max_steps=30", "train.eval_every=30"]
    plain_cfg = ["train.activation_reg=0", "train.temporal_reg=0"]
    assert run_train(*common, *plain_cfg, "train.log_every=1", f"out_dir={tmp_path / 'plain'}") == 0
    penalty = ["train.activation_reg=20", "train.temporal_reg=1"]
    assert run_train(*common, *penalty, "train.log_every=1", f"out_dir={tmp_path / 'penalized'}") == 0

    def first_loss(out) -> float:
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return next(e["train_loss"] for e in events if "train_loss" in e)

    assert first_loss(tmp_path / "plain") == first_loss(tmp_path / "penalized")
    plain = load_checkpoint(tmp_path / "plain" / "ckpt.pt")
    penalized = load_checkpoint(tmp_path / "penalized" / "ckpt.pt")
    assert not torch.equal(plain["model"]["head.weight"], penalized["model"]["head.weight"])
    top_layer = -1  # streams' h is (B, L, H)
    plain_size = plain["streams"]["h"][:, top_layer].pow(2).mean()
    assert penalized["streams"]["h"][:, top_layer].pow(2).mean() < 0.5 * plain_size


def test_max_steps_auto_fits_the_schedule_into_the_budget(corpus_100k, tmp_path, monkeypatch):
    """train.max_steps=auto: the first steps are timed, the total is fixed, logged and saved, and the run ends on
    that total (not on the clock) with the cosine at its end, inside train.max_minutes. A resumed run keeps the
    total it was given instead of timing again."""
    budget = ["train.max_steps=auto", "train.max_minutes=0.15", "train.eval_every=200", "train.save_every=400"]
    started = time.monotonic()
    assert run_train(f"data.path={corpus_100k}", *budget, f"out_dir={tmp_path / 'whole'}") == 0
    assert time.monotonic() - started < 0.15 * 60 + 10  # the budget, and a few seconds of setup and the end
    events = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    plans = [e for e in events if "seconds_per_step" in e]  # the plan, then any revision
    assert plans[0]["revised"] is None and plans[0]["max_steps"] > plans[0]["step"] + 100
    assert_revisions_keep_the_rule(plans)
    ckpt = load_checkpoint(tmp_path / "whole" / "ckpt.pt")
    assert ckpt["step"] == ckpt["max_steps"] == plans[-1]["max_steps"]  # ended by the schedule, not the clock
    last = [e for e in events if "lr" in e][-1]  # the last logged step: up to train.log_every before the end
    assert last["lr"] == pytest.approx(0.0005, rel=0.05) and ckpt["max_steps"] - last["step"] < 50  # train.min_lr

    with monkeypatch.context() as patch:  # stop after the plan; the rerun must not plan again
        stop_after(patch, plans[0]["step"] + 200)
        assert run_train(f"data.path={corpus_100k}", *budget, f"out_dir={tmp_path / 'resumed'}") == 0
    first = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")
    assert run_train(f"data.path={corpus_100k}", *budget, f"out_dir={tmp_path / 'resumed'}") == 0
    assert_resumed(tmp_path / "resumed", first["step"])
    resumed_start = start_events(tmp_path / "resumed")[-1]
    assert resumed_start["max_steps"] == first["max_steps"]  # the saved total, not a new plan
    events = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    after = [e for e in events[events.index(resumed_start) :] if "seconds_per_step" in e]
    assert all(e["revised"] is not None for e in after)  # at most revised, never planned afresh
    assert_revisions_keep_the_rule([{"step": first["step"], "max_steps": first["max_steps"]}, *after])
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == ([first] + after)[-1]["max_steps"]


def test_max_steps_auto_plans_with_a_bounded_evaluation(tmp_path):
    """A validation split far too large to score inside the budget (6.5M characters: about 15 s for this model,
    against a 9-s budget): with train.eval_chars every evaluation scores exactly its 16,000 characters, the same
    part each time, so train.max_steps=auto plans around a short evaluation and the run completes its schedule."""
    from helpers import ENGLISH

    path = tmp_path / "long_validation.txt"
    path.write_text(ENGLISH.read_text(encoding="utf-8") * 60, encoding="utf-8")
    budget = ["train.max_steps=auto", "train.max_minutes=0.15", "train.eval_every=100", "train.save_every=400"]
    out = tmp_path / "run"
    overrides = [f"data.path={path}", "data.val_fraction=0.9", "train.eval_chars=16000", *budget, f"out_dir={out}"]
    assert run_train(*overrides) == 0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in events if "val_loss" in e]
    assert len(evaluations) >= 3 and {e["val_chars"] for e in evaluations} == {16_000}
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == ckpt["max_steps"]  # ended by the schedule it planned, not by the clock


def assert_revisions_keep_the_rule(plans: list[dict]) -> None:
    """Each revision shortens the run, or lengthens it by 2% or more while the run is in its first half."""
    for earlier, later in zip(plans, plans[1:]):
        shorter = later["max_steps"] < earlier["max_steps"]
        longer_early = later["max_steps"] >= 1.02 * earlier["max_steps"] and later["step"] < earlier["max_steps"] / 2
        assert shorter or longer_early, (earlier, later)


def test_max_steps_auto_revises_up_early_and_down_any_time(monkeypatch):
    """The budget's arithmetic on a fake clock: the first steps are slow (0.3 s), the plan is fixed from them;
    the machine speeds up (0.2 s), so the first evaluation lengthens the run; past half the run a faster
    machine changes nothing; a machine that slows down shortens the run at once."""
    from types import SimpleNamespace

    import trainer.stopping
    from trainer.state import TrainState
    from trainer.stopping import Budget

    clock = [0.0]
    monkeypatch.setattr(trainer.stopping.time, "monotonic", lambda: clock[0])
    cfg = SimpleNamespace(train=SimpleNamespace(max_minutes=10, max_steps="auto", eval_every=500))
    events = []
    accelerator = SimpleNamespace(num_processes=1, is_main_process=True, device="cpu")
    budget = Budget(cfg, accelerator, events.append, lambda line: None)
    state = TrainState()

    def evaluate() -> None:  # an evaluation of 2 s, reported to the budget as the training loop does
        clock[0] += 2.0
        budget.replan(state, 2.0)

    def train_until(step: int, seconds_per_step: float) -> None:
        while state.step < step:
            planning = budget.ready_to_plan(state)
            clock[0] += seconds_per_step
            state.step += 1
            if planning:
                evaluate()

    train_until(200, 0.3)  # planned after 20 steps and 3% of the budget (18 s): 0.3 s a step
    first = state.max_steps
    assert events[0]["seconds_per_step"] == pytest.approx(0.3, rel=0.05) and 1700 < first < 1900
    train_until(500, 0.2)
    evaluate()  # the steps so far average under 0.3 s: more fit, and step 500 < half the run
    assert state.max_steps >= 1.02 * first
    grown = state.max_steps
    train_until(1500, 0.1)  # faster still, but past half the run: no change
    evaluate()
    assert state.max_steps == grown
    train_until(1700, 1.5)  # a machine that slowed down: shorter, at once
    evaluate()
    assert state.max_steps < grown
    assert_revisions_keep_the_rule(events)


def test_an_out_dir_trained_on_another_text_is_refused(tiny_run, corpus_100k, tmp_path, capsys):
    """The same characters in another order: the vocabulary matches, the text does not (corpus_sha256)."""
    lines = corpus_100k.read_text(encoding="utf-8").splitlines(keepends=True)
    other = tmp_path / "other.txt"
    other.write_text("".join(reversed(lines)), encoding="utf-8")
    before = {p.name: digest(p) for p in tiny_run.iterdir() if p.is_file()}
    assert run_train(f"data.path={other}", f"out_dir={tiny_run}") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "was trained on another text" in line and str(corpus_100k) in line and str(other) in line
    assert f"train.init_from={tiny_run / 'ckpt.pt'}" in line
    assert {p.name: digest(p) for p in tiny_run.iterdir() if p.is_file()} == before


def test_one_run_at_a_time_on_an_out_dir(corpus_100k, tmp_path):
    """A second run on an out_dir that a live run holds is refused in one line and changes nothing; the first
    run goes on undisturbed (stopped by Ctrl-C once the second is refused: it saves and exits 0), and its
    metrics hold each step once."""
    from helpers import run_cli_background

    command = ["-m", "trainer.train", "--config", str(EMPTY_CONFIG), *TINY, f"data.path={corpus_100k}"]
    command += ["train.max_steps=5000", "train.log_every=1", "train.eval_every=500", "train.sample_chars=0"]
    command += [f"out_dir={tmp_path}"]
    first = run_cli_background(*command)
    try:
        while not (tmp_path / "metrics.jsonl").exists() or "train_loss" not in (tmp_path / "metrics.jsonl").read_text():
            assert first.poll() is None, f"the first run ended early (exit {first.returncode})"
            time.sleep(0.05)
        second = run_cli(*command)  # the same command again, while the first run lives
        assert second.returncode == 2
        assert f"is in use by another run (process {first.pid})" in one_line_error(second.stderr)
        assert first.poll() is None, "the first run ended before the second was refused"
        first.send_signal(signal.SIGINT)
    finally:
        assert first.wait(timeout=300) == 0
    stopped_at = load_checkpoint(tmp_path / "ckpt.pt")["step"]
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [e["step"] for e in events if "train_loss" in e]
    assert 1 <= stopped_at < 5000 and trained == list(range(1, stopped_at + 1)) and len(start_events(tmp_path)) == 1


def test_extending_a_finished_run_keeps_its_schedule(corpus_100k, tmp_path):
    """A run that ended at step 20, rerun with train.max_steps=30 train.decay_steps=20: it resumes at 20 and
    trains on at the end of the old cosine (train.min_lr), instead of jumping back up a new, longer one."""
    from trainer.config import load_config
    from trainer.step import lr_at

    common = [f"data.path={corpus_100k}", "train.log_every=1", "train.eval_every=10", "train.save_every=10"]
    assert run_train(*common, "train.max_steps=20", f"out_dir={tmp_path}") == 0
    assert run_train(*common, "train.max_steps=30", "train.decay_steps=20", f"out_dir={tmp_path}") == 0
    assert_resumed(tmp_path, 20)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {e["step"]: e["lr"] for e in events if "lr" in e}  # the rate of step s - 1, logged at step s
    assert sorted(lrs) == list(range(1, 31))
    assert all(lrs[step] == pytest.approx(0.0005) for step in range(21, 31))  # train.min_lr
    cfg = load_config(EMPTY_CONFIG, [*TINY, "train.max_steps=30"])
    assert lr_at(20, cfg, 30) > 0.001  # without decay_steps the rate would have gone back up


def test_samples_while_training_change_nothing(corpus_100k, tmp_path, capsys):
    """At each evaluation a sample of train.sample_chars characters, primed with the validation split's first
    line, goes to the console and into metrics.jsonl; the weights end bitwise as without sampling."""
    from trainer.data import load_corpus, split

    common = [f"data.path={corpus_100k}", "train.max_steps=20", "train.eval_every=10", "model.dropout=0.2"]
    assert run_train(*common, "train.sample_chars=60", f"out_dir={tmp_path / 'sampled'}") == 0
    out = capsys.readouterr().out
    _, val = split(load_corpus(str(corpus_100k)).ids, 0.1)
    first_line = load_corpus(str(corpus_100k)).decode(val[:200]).split("\n")[0] + "\n"
    assert out.count(f"--- sample: {first_line}") == 2
    events = [json.loads(line) for line in (tmp_path / "sampled" / "metrics.jsonl").read_text().splitlines()]
    samples = [e["sample"] for e in events if "val_loss" in e]
    vocab = set(load_checkpoint(tmp_path / "sampled" / "ckpt.pt")["vocab"])
    assert len(samples) == 2 and all(len(s) == 60 and set(s) <= vocab for s in samples)
    assert samples[0] != samples[1]  # the model changed between the evaluations
    assert run_train(*common, "train.sample_chars=0", f"out_dir={tmp_path / 'plain'}") == 0
    events = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not any("sample" in e for e in events)
    assert_same_training_state(
        load_checkpoint(tmp_path / "sampled" / "ckpt.pt"), load_checkpoint(tmp_path / "plain" / "ckpt.pt")
    )
    capsys.readouterr()
    primed = ["train.sample_prime=El", "train.sample_chars=30", f"out_dir={tmp_path / 'primed'}"]
    assert run_train(*common, *primed) == 0
    assert capsys.readouterr().out.count("--- sample: El") == 2


def test_tensorboard_gets_what_metrics_jsonl_gets(corpus_100k, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = [f"data.path={corpus_100k}", "train.max_steps=20", "train.eval_every=10", "train.log_every=5"]
    assert run_train(*common, "train.log_with=tensorboard", f"out_dir={tmp_path}") == 0
    files = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file in out_dir"
    scalars = {}
    for file in files:
        events = EventAccumulator(str(file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars[tag] = {e.step: e.value for e in events.Scalars(tag)}
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {e["step"]: e["val_loss"] for e in metrics if "val_loss" in e}
    train = {e["step"]: e["train_loss"] for e in metrics if "train_loss" in e}
    assert scalars["val_loss"] == pytest.approx(val) and scalars["train_loss"] == pytest.approx(train)
    assert sorted(val) == [10, 20] and sorted(train) == [5, 10, 15, 20]


def test_an_unavailable_tracker_is_one_line(corpus_100k, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert (
        run_train(f"data.path={corpus_100k}", "train.max_steps=4", "train.log_with=wandb", f"out_dir={tmp_path}") == 0
    )
    err = capsys.readouterr().err
    assert "charlstm: train.log_with=wandb: wandb is not installed (pip install wandb); metrics.jsonl only" in err


def test_fine_tuning_on_new_text(trained_run, tmp_path, capsys):
    """train.init_from: a model trained on English, fine-tuned on Spanish. The characters English lacked are
    added (their rows start as a fresh model's), the old rows keep their trained values, the loss starts far
    below a from-scratch model's and falls, and the exported model samples with old and new characters."""
    from helpers import SPANISH, TRAINED

    from export.onnx import main as export_main
    from serve import Sampler

    english = load_checkpoint(trained_run / "ckpt.pt")
    common = [*TRAINED, f"data.path={SPANISH}", "train.batch_size=4", "train.seq_len=16", "data.val_fraction=0.2"]
    common += ["train.max_steps=30", "train.eval_every=30", "train.save_every=30", "train.log_every=1"]
    init = f"train.init_from={trained_run / 'ckpt.pt'}"
    assert run_train(*common, init, "train.lr=0.0001", "train.max_steps=1", f"out_dir={tmp_path / 'one'}") == 0
    err = capsys.readouterr().err
    spanish_only = sorted(set(SPANISH.read_text(encoding="utf-8")) - set(english["vocab"]))
    assert f"characters added to its {len(english['vocab'])}" in err and f"{len(spanish_only)} characters" in err
    tuned = load_checkpoint(tmp_path / "one" / "ckpt.pt")
    assert tuned["vocab"] == english["vocab"] + spanish_only  # old ids kept, the new appended
    rows = len(english["vocab"])
    lstm = "lstms.0.weight_hh_l0"
    assert (tuned["model"][lstm] - english["model"][lstm]).abs().max() < 0.01  # one small step away
    assert torch.allclose(tuned["model"]["embed.weight"][:rows], english["model"]["embed.weight"], atol=0.01)

    def losses(out) -> list[float]:
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [e["train_loss"] for e in events if "train_loss" in e]

    assert run_train(*common, init, f"out_dir={tmp_path / 'tuned'}") == 0
    assert run_train(*common, f"out_dir={tmp_path / 'scratch'}") == 0
    tuned_losses, scratch_losses = losses(tmp_path / "tuned"), losses(tmp_path / "scratch")
    assert tuned_losses[0] < scratch_losses[0] - 0.4  # it already knows letters and spaces (3.43 against 3.99)
    assert sum(tuned_losses[-5:]) < sum(tuned_losses[:5])  # and it learns the new text
    assert export_main([str(tmp_path / "tuned" / "ckpt.pt")]) == 0
    sampler = Sampler(tmp_path / "tuned" / "ckpt.onnx")
    old_only = next(ch for ch in english["vocab"] if ch not in SPANISH.read_text(encoding="utf-8") and ch.isalnum())
    assert len(sampler.generate(f"{old_only} año ¿", 40, top_k=5, seed=0)) == 40


@pytest.mark.parametrize("change", ["model.hidden=64", "model.layers=3", "model.embed=8"])
def test_fine_tuning_needs_the_same_shape(trained_run, tmp_path, capsys, change):
    from helpers import SPANISH, TRAINED

    key = change.split("=")[0]
    args = [*TRAINED, f"data.path={SPANISH}", "train.batch_size=4", "train.seq_len=16", "data.val_fraction=0.2"]
    assert run_train(*args, f"train.init_from={trained_run / 'ckpt.pt'}", change, f"out_dir={tmp_path}") == 2
    assert f"has {key}=" in one_line_error(capsys.readouterr().err) and not tmp_path.joinpath("ckpt.pt").exists()
