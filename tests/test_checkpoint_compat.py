"""A checkpoint written by an earlier version of the code resumes with this one: to the weights that code's
uninterrupted run reached, within a tolerance across CPUs, and bitwise against itself on this machine."""

from __future__ import annotations

import json
import shutil

import torch
from helpers import DATA, ENGLISH, run_train

from trainer.checkpoint import load_checkpoint

SAVED = DATA / "resume_v0"
# the settings of the run that wrote SAVED (with helpers' TINY): the weight average and weight drop on, so
# that the checkpoint holds train_weights beside model
SETTINGS = [
    f"data.path={ENGLISH}",
    "model.embed=8",
    "model.hidden=24",
    "model.dropout=0",  # the code that wrote SAVED drew its dropout masks otherwise
    "model.weight_drop=0.1",
    "model.locked_dropout=true",
    "train.ema_decay=0.9",
    "train.max_steps=20",
    "train.decay_steps=20",
    "train.save_every=10",
    "train.eval_every=10",
    "train.sample_chars=0",
]


TOLERANCE = 1e-4  # across CPUs the float kernels differ (by the instructions they find); 3e-6 seen on an EPYC


def resume(out_dir):
    shutil.copy(SAVED / "ckpt_step10.pt", out_dir / "ckpt.pt")
    assert run_train(*SETTINGS, f"out_dir={out_dir}") == 0
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [e["resumed_from"] for e in events if e.get("start")] == [10]
    return load_checkpoint(out_dir / "ckpt.pt")


def tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The weights, their average, the streams' state and the optimizer's moments, by name."""
    found = {f"{key}.{name}": value for key in ("model", "train_weights") for name, value in checkpoint[key].items()}
    found.update({f"streams.{name}": checkpoint["streams"][name] for name in ("h", "c")})
    for i, state in enumerate(checkpoint["optimizer"]["state"].values()):
        found.update({f"optimizer.{i}.{name}": state[name] for name in ("exp_avg", "exp_avg_sq", "step")})
    return found


def test_a_checkpoint_of_the_previous_layout_resumes(tmp_path):
    """ckpt_step10.pt came from an earlier version of the code (commit 3b9ed87), stopped at step 10 of 20.
    Resumed to 20 by this code it ends where that code's uninterrupted run ended (expected_step20.pt, written on
    another CPU) within TOLERANCE, and bitwise where a second resume of the same file on this machine ends."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = resume(tmp_path / "a"), resume(tmp_path / "b")
    expected = torch.load(SAVED / "expected_step20.pt", weights_only=True)
    assert first["step"] == expected["step"] == 20
    ours, again, theirs = tensors(first), tensors(second), tensors(expected)
    assert ours.keys() == again.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], again[name]), name
        assert torch.allclose(ours[name].double(), value.double(), rtol=TOLERANCE, atol=TOLERANCE), (
            f"{name}: {(ours[name].double() - value.double()).abs().max():.3g} apart"
        )
    assert first["val_loss"] == second["val_loss"]
    assert abs(first["val_loss"] - expected["val_loss"]) < TOLERANCE
    assert abs(first["best_val_loss"] - expected["best_val_loss"]) < TOLERANCE
