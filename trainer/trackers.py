"""train.log_with: the trackers (tensorboard, wandb) that can run here; metrics.jsonl is always written."""

from __future__ import annotations

import os
import sys


def available_trackers(log_with: str) -> list[str]:
    """The trackers of train.log_with that can run here; for each one that cannot, one line says why."""
    import importlib.util

    wanted = {"none": [], "all": ["tensorboard", "wandb"]}.get(log_with, [log_with])
    ready = []
    for name in wanted:
        if importlib.util.find_spec(name) is None:
            tensorboard = "pip install 'charlstm[tensorboard]' (in a clone: .venv/bin/pip install -e '.[tensorboard]')"
            extra = tensorboard if name == "tensorboard" else "pip install wandb"
            why = f"{name} is not installed ({extra})"
        elif name == "wandb" and not wandb_logged_in():
            why = "wandb is not logged in (wandb login)"
        else:
            ready.append(name)
            continue
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"charlstm: train.log_with={log_with}: {why}; metrics.jsonl only", file=sys.stderr)
    return ready


def wandb_logged_in() -> bool:
    import wandb

    return bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key)


def flatten(values: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 3e-3}} -> {"train.lr": 3e-3}"""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
