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
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {value}")
    non_negative = {
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
    _validate_bounds(cfg)
    _validate_choices(cfg)


# Adam divides each gradient by its running RMS, so a step moves every weight by about the learning rate whatever
# the gradients' scale. nn.LSTM starts its weights within +-1/sqrt(hidden) (0.25 at hidden=16): from a rate of 1
# on, one step moves each weight further than its whole initial range, and no run learns. The shipped configs use
# 0.002 to 0.004. The bound also keeps AdamW's step, lr / (1 - 0.9^t) (up to 10 x lr), far inside float32:
# train.lr=1e38 overflowed it, a traceback inside AdamW.
MAX_LR = 1.0
# A week: past any wait of this trainer's collectives (the longest are an evaluation or a save: minutes), and far
# inside what the process group's clocks hold: from about 1e10 s on, its deadline (int64 nanoseconds from now)
# overflows and the first meeting times out at once (seen with TCPStore); from 8.64e13 s timedelta refuses it.
MAX_COLLECTIVE_TIMEOUT = 7 * 24 * 3600.0
MAX_SEED = 2**64 - 1  # torch's generators take 64-bit seeds: a larger one overflows in torch.manual_seed


def _validate_bounds(cfg: Config) -> None:
    """The keys with an upper bound: past it a value means nothing, and the machinery overflows (a traceback)."""
    t = cfg.train
    if not 0.0 < t.lr <= MAX_LR:
        raise ConfigError(f"config key 'train.lr' must be in (0, {MAX_LR:g}], got {t.lr}")
    if not 0.0 <= t.min_lr <= MAX_LR:
        raise ConfigError(f"config key 'train.min_lr' must be in [0, {MAX_LR:g}], got {t.min_lr}")
    if not 0.0 < t.collective_timeout <= MAX_COLLECTIVE_TIMEOUT:
        raise ConfigError(
            f"config key 'train.collective_timeout' must be in (0, {MAX_COLLECTIVE_TIMEOUT:g}] seconds (a week), "
            f"got {t.collective_timeout}"
        )
    if t.seed > MAX_SEED:
        raise ConfigError(f"config key 'train.seed' must be in [0, {MAX_SEED}] (64 bits), got {t.seed}")


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
