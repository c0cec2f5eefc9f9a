"""The checks of a Config's values that their types alone cannot express: ranges, the words a key takes, the
combinations of keys; and how train.batch_size divides over the processes. Each raises ConfigError naming the
key, which the CLI prints as one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.errors import ConfigError

if TYPE_CHECKING:  # trainer/config.py imports this module: the type only, no import cycle
    from trainer.config import Config


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    positive = {
        "model.embed": cfg.model.embed,
        "model.hidden": cfg.model.hidden,
        "model.layers": cfg.model.layers,
        "train.batch_size": cfg.train.batch_size,
        "train.seq_len": cfg.train.seq_len,
        "train.grad_accum": cfg.train.grad_accum,
        "train.eval_every": cfg.train.eval_every,
        "train.save_every": cfg.train.save_every,
        "train.log_every": cfg.train.log_every,
        "train.lr": cfg.train.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {value}")
    non_negative = {
        "train.min_lr": cfg.train.min_lr,
        "train.warmup_steps": cfg.train.warmup_steps,
        "train.weight_decay": cfg.train.weight_decay,
        "train.grad_clip": cfg.train.grad_clip,
        "train.seed": cfg.train.seed,
        "train.activation_reg": cfg.train.activation_reg,
        "train.sample_chars": cfg.train.sample_chars,
        "train.temporal_reg": cfg.train.temporal_reg,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {value}")
    for key, value in [
        ("model.dropout", cfg.model.dropout),
        ("model.weight_drop", cfg.model.weight_drop),
        ("train.ema_decay", cfg.train.ema_decay),
        ("train.state_reset", cfg.train.state_reset),
        ("train.input_noise", cfg.train.input_noise),
    ]:
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key {key!r} must be in [0, 1), got {value}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"config key 'data.val_fraction' must be in (0, 1), got {cfg.data.val_fraction}")
    if not 0.0 < cfg.train.beta2 < 1.0:
        raise ConfigError(f"config key 'train.beta2' must be in (0, 1), got {cfg.train.beta2}")
    _validate_choices(cfg)


def _validate_choices(cfg: Config) -> None:
    """The keys that take one of a few words, and the combinations of keys."""
    if cfg.train.log_with not in ("none", "tensorboard", "wandb", "all"):
        raise ConfigError(
            f"config key 'train.log_with' must be none, tensorboard, wandb or all, got {cfg.train.log_with!r}"
        )
    if cfg.data.normalize not in ("NFC", "NFKC", "none"):
        raise ConfigError(f"config key 'data.normalize' must be NFC, NFKC or none, got {cfg.data.normalize!r}")
    if cfg.train.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(
            f"config key 'train.mixed_precision' must be auto, no, bf16 or fp16, got {cfg.train.mixed_precision!r}"
        )
    if isinstance(cfg.train.max_steps, str):
        if cfg.train.max_steps != "auto":
            raise ConfigError(f"config key 'train.max_steps' must be an integer or auto, got {cfg.train.max_steps!r}")
        if cfg.train.max_minutes is None:
            raise ConfigError("config key 'train.max_steps' is auto: set train.max_minutes, the budget it fills")
    elif cfg.train.max_steps <= 0:
        raise ConfigError(f"config key 'train.max_steps' must be > 0, got {cfg.train.max_steps}")
    if cfg.train.decay_steps is not None and cfg.train.decay_steps <= 0:
        raise ConfigError(f"config key 'train.decay_steps' must be > 0, got {cfg.train.decay_steps}")
    if cfg.train.eval_chars is not None and cfg.train.eval_chars < cfg.train.batch_size:
        raise ConfigError(
            f"config key 'train.eval_chars' must be at least train.batch_size={cfg.train.batch_size} (one "
            f"character per stream), got {cfg.train.eval_chars}; none scores the whole validation split"
        )
    if cfg.train.collective_timeout <= 0:
        raise ConfigError(f"config key 'train.collective_timeout' must be > 0, got {cfg.train.collective_timeout}")
    if cfg.train.max_minutes is not None and cfg.train.max_minutes <= 0:
        raise ConfigError(f"config key 'train.max_minutes' must be > 0, got {cfg.train.max_minutes}")
    if not cfg.out_dir:
        raise ConfigError("config key 'out_dir' must not be empty")


def check_processes(cfg: Config, processes: int) -> int:
    """The streams of each process: train.batch_size must divide over the processes, and each process's
    streams over train.grad_accum. launch.sh checks this before it starts any worker, the trainer again."""
    t = cfg.train
    if t.batch_size % processes:
        raise ConfigError(f"train.batch_size={t.batch_size} does not divide over {processes} processes")
    local_batch = t.batch_size // processes
    if local_batch % t.grad_accum:
        raise ConfigError(f"train.grad_accum={t.grad_accum} must divide the {local_batch} streams of each process")
    return local_batch
