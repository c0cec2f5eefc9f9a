"""The model (seeded, or from train.init_from's weights), its weight average and the optimizer of a run."""

from __future__ import annotations

import torch

from trainer.checkpoint import Checkpoint
from trainer.config import Config
from trainer.dist.precision import Precision
from trainer.errors import UserError
from trainer.model import CharLSTM, build_model
from trainer.regularize import WeightAverage


def build_models(
    cfg: Config, vocab_size: int, precision: Precision, init: Checkpoint | None
) -> tuple[CharLSTM, WeightAverage | None]:
    """The model, seeded (or from train.init_from's weights), and its weight average when train.ema_decay."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(vocab_size, cfg.model, precision.fp32_lstm)
    if init is not None:
        load_init_weights(model, init, cfg.train.init_from)
    average = None
    if cfg.train.ema_decay > 0:
        average = WeightAverage(build_model(vocab_size, cfg.model, precision.fp32_lstm), cfg.train.ema_decay)
        average.model.load_state_dict(model.state_dict())
    return model, average


def load_init_weights(model: CharLSTM, init: Checkpoint, path: str) -> None:
    """The init checkpoint's weights (`model`: what it evaluated and exported) into a freshly initialized model
    whose vocabulary may be longer: the rows of the added characters (embedding, head weight and bias) keep
    the fresh model's initialization, like a new model's; every other weight is the checkpoint's."""
    own = model.state_dict()
    rows = len(init["vocab"])
    for key, value in init["model"].items():
        if key not in own:
            raise UserError(f"train.init_from {path}: its weights do not fit this model ({key})")
        if key in ("embed.weight", "head.weight", "head.bias"):
            own[key][:rows] = value
        else:
            own[key].copy_(value)
    model.load_state_dict(own)


def make_optimizer(model: CharLSTM, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices only (not on biases nor on the embedding)."""
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    groups = [
        {"params": matrices, "weight_decay": cfg.train.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # one kernel for all parameters on GPU
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, cfg.train.beta2), fused=fused or None)
