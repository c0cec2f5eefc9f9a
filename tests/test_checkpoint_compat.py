"""A checkpoint written by an earlier version of the code resumes bitwise with this one."""

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
    "model.dropout=0",  # dropout's masks changed with issue #30 (one hashed draw per step)
    "model.weight_drop=0.1",
    "model.locked_dropout=true",
    "train.ema_decay=0.9",
    "train.max_steps=20",
    "train.decay_steps=20",
    "train.save_every=10",
    "train.eval_every=10",
    "train.sample_chars=0",
]


def test_a_checkpoint_of_the_previous_layout_resumes_bitwise(tmp_path):
    """ckpt_step10.pt came from the code before issue #30's step (pinned, prefetched windows, one read of the
    device per step, hashed dropout masks; commit 3b9ed87), stopped at step 10 of 20; resumed to 20 by this code,
    it ends bitwise where that code's uninterrupted run ended (expected_step20.pt). (The files before them came
    from the code before issue #28's layout and passed the same test until dropout's draws changed.)"""
    shutil.copy(SAVED / "ckpt_step10.pt", tmp_path / "ckpt.pt")
    assert run_train(*SETTINGS, f"out_dir={tmp_path}") == 0
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [e["resumed_from"] for e in events if e.get("start")] == [10]
    resumed = load_checkpoint(tmp_path / "ckpt.pt")
    expected = torch.load(SAVED / "expected_step20.pt", weights_only=True)
    assert resumed["step"] == expected["step"] == 20
    for key in ("model", "train_weights"):
        assert resumed[key].keys() == expected[key].keys()
        for name, value in expected[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name}"
    for name in ("h", "c"):
        assert torch.equal(resumed["streams"][name], expected["streams"][name]), name
    for got, want in zip(resumed["optimizer"]["state"].values(), expected["optimizer"]["state"].values()):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got[name], want[name]), name
    assert resumed["val_loss"] == expected["val_loss"]
    assert resumed["best_val_loss"] == expected["best_val_loss"]
