import hashlib
import json
import math
import time

import pytest
import torch
import yaml
from conftest import EMPTY_CONFIG, ROOT, TINY, assert_resumed, one_line_error, run_cli, run_train, start_events

from trainer.checkpoint import load_checkpoint
from trainer.precision import cpu_runs_bf16_lstm


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_training_state(a, b, exact=True):
    """Weights, optimizer moments and carried stream state of two checkpoints."""
    assert a["step"] == b["step"]
    check = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-5))
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
    ckpt = torch.load(tiny_run / "ckpt.pt", weights_only=True)  # the DESIGN.md contract
    assert {"model", "vocab", "config", "step", "val_loss"} <= set(ckpt)
    assert ckpt["step"] == 40 and ckpt["val_loss"] == pytest.approx(val_events[-1]["val_loss"])
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["streams"]["h"].shape == (8, 2, 48)  # (B, L, H): every stream's carried state
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    assert best["val_loss"] == min(e["val_loss"] for e in val_events)


def test_loss_falls_on_english(corpus_100k, tmp_path):
    """The English test text: validation loss below 2.45 nats within 300 steps (a unigram model scores 3.24 on
    its validation split; 2.31 was measured when this test was written)."""
    code = run_train(
        f"data.path={corpus_100k}",
        f"out_dir={tmp_path}",
        "model.embed=32",
        "model.hidden=128",
        "model.dropout=0",
        "train.batch_size=16",
        "train.seq_len=64",
        "train.lr=0.006",
        "train.min_lr=0.0006",
        "train.warmup_steps=10",
        "train.max_steps=300",
        "train.eval_every=100",
        "train.save_every=300",
    )
    assert code == 0
    assert load_checkpoint(tmp_path / "ckpt.pt")["val_loss"] < 2.45


def stop_after(monkeypatch, steps: int) -> None:
    """Make the run behave as if SIGTERM arrived during step `steps` (the loop polls once per step)."""
    import trainer.step
    import trainer.train as train_module

    class StopLater(trainer.step.StopFlags):
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
    probe = run_cli("-c", "from trainer.precision import cpu_runs_bf16_lstm as f; print(f())", env=AVX2)
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
        (None, ["model.hidden=wide"], "config key 'model.hidden': expected int"),
        (None, ["model.layers=0"], "'model.layers' must be > 0"),
        (None, ["train.seq_len=-1"], "'train.seq_len' must be > 0"),
        (None, ["train.mixed_precision=fp16"], "fp16 needs a CUDA GPU"),
        (None, ["train.grad_accum=3"], "grad_accum"),
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
        ("data.path={spanish}", "different vocabulary"),
        ("train.max_steps=10", "past train.max_steps=10"),
    ],
)
def test_mismatched_checkpoint_is_refused_and_kept(tiny_run, change, message, capsys, corpus_100k):
    from conftest import SPANISH

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
    """`python trainer/train.py ...` and DESIGN.md's `accelerate launch trainer/train.py --config FILE ...`."""
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
    budget = ["train.max_steps=auto", "train.max_minutes=0.25", "train.eval_every=200", "train.save_every=400"]
    started = time.monotonic()
    assert run_train(f"data.path={corpus_100k}", *budget, f"out_dir={tmp_path / 'whole'}") == 0
    assert time.monotonic() - started < 0.25 * 60 + 10  # the budget, and a few seconds of setup and the end
    events = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    plans = [e for e in events if "seconds_per_step" in e]  # the plan, then any revision down
    assert plans[0]["revised"] is None and plans[0]["max_steps"] > plans[0]["step"] + 100
    assert all(later["max_steps"] < earlier["max_steps"] for earlier, later in zip(plans, plans[1:]))
    ckpt = load_checkpoint(tmp_path / "whole" / "ckpt.pt")
    assert ckpt["step"] == ckpt["max_steps"] == plans[-1]["max_steps"]  # ended by the schedule, not the clock
    assert [e["lr"] for e in events if "lr" in e][-1] == pytest.approx(0.0005, rel=1e-3)  # train.min_lr

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
    assert all(e["revised"] is not None for e in after)  # at most revised down, never planned afresh
    totals = [first["max_steps"]] + [e["max_steps"] for e in after]
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == totals[-1] == min(totals)
