"""The config schema: every key with its type, default, range and meaning, as pydantic models. YAML files and
`key.sub=value` overrides only fill them in (trainer/config/load.py); `--help` and docs/config.md list the same
fields (trainer/config/docs.py). Values are taken strictly: `hidden: "512"` is an error, not a number."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from trainer.errors import ConfigError

# Adam divides each gradient by its running RMS, so a step moves every weight by about the learning rate whatever
# the gradients' scale. nn.LSTM starts its weights within +-1/sqrt(hidden) (0.25 at hidden=16): from a rate of 1
# on, one step moves each weight further than its whole initial range, and no run learns. The shipped configs use
# 0.002 to 0.004. The bound also keeps AdamW's step, lr / (1 - 0.9^t) (up to 10 x lr), far inside float32.
MAX_LR = 1.0
# A week: past any wait of this trainer's collectives (the longest are an evaluation or a save: minutes), and far
# inside what the process group's clocks hold: from about 1e10 s on, its deadline (int64 nanoseconds from now)
# overflows and the first meeting would time out at once; from 8.64e13 s timedelta refuses it.
MAX_COLLECTIVE_TIMEOUT = 7 * 24 * 3600.0
MAX_SEED = 2**64 - 1  # torch's generators take 64-bit seeds: a larger one overflows in torch.manual_seed


class Section(BaseModel):
    """A part of the config: unknown keys and values of another type are errors, and floats must be finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DataConfig(Section):
    path: str = Field(
        "tinyshakespeare",
        description="a UTF-8 text file, a folder (its files joined), a glob, `tinyshakespeare` (downloaded once, "
        "sha256-checked), `builtin:python-docs` (the Python reference documentation that ships with every CPython: "
        "465k characters) or `builtin:python-stdlib` (the standard library's source: 31M characters). Files named "
        "`.jsonl`/`.json` (JSON Lines), `.csv`, `.tsv`, `.parquet`, `.arrow` and a folder written by `datasets`' "
        "save_to_disk are read by rows; any file may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`)",
    )
    text_field: str = Field(
        "text", min_length=1, description="the JSON field or the CSV, Parquet or Arrow column that holds a row's text"
    )
    separator: str = Field(
        "\n\n",
        description="what joins documents (rows, and files) into the one text; it joins the vocabulary like any "
        "character. A row whose text is null or empty adds nothing and is counted",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="a row that is not JSON, lacks data.text_field, holds no string there, or is ragged or not "
        "UTF-8: `error` (one line naming the file and the line or row, before any training) or `skip` (left out, "
        "counted in one line)",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="the LAST this fraction of the corpus is the validation split; training uses what comes before",
    )
    normalize: Literal["NFC", "NFKC", "none"] = Field(
        "NFC",
        description="Unicode form the text is put into before its vocabulary is built: `NFC`, `NFKC` or `none` (the "
        "code points as they are); stored with the vocabulary, and samplers put a prime into the same form",
    )
    cache_dir: str | None = Field(
        None,
        description="where the encoded corpus is cached (in its ids/ folder); none = $XDG_CACHE_HOME/charlstm, else "
        "~/.cache/charlstm",
    )


class ModelConfig(Section):
    embed: int = Field(
        64, gt=0, description="character embedding size; the first layer's input projection folds into a table"
    )
    hidden: int = Field(512, gt=0, description="LSTM hidden size H")
    layers: int = Field(2, gt=0, description="stacked LSTM layers")
    dropout: float = Field(
        0.25, ge=0, lt=1, description="between LSTM layers and before the output head (training only)"
    )
    locked_dropout: bool = Field(
        False, description="one mask per stream and window, shared by its T steps (AWD-LSTM style)"
    )
    weight_drop: float = Field(
        0.0, ge=0, lt=1, description="DropConnect on the recurrent matrices W_hh, one mask per step (AWD-LSTM)"
    )


class TrainConfig(Section):
    batch_size: int = Field(
        64, gt=0, description="GLOBAL number of parallel character streams, split evenly over processes"
    )
    seq_len: int = Field(100, gt=0, description="truncated-BPTT window T; state is carried from one window to the next")
    lr: float = Field(
        3e-3,
        gt=0,
        le=MAX_LR,
        description="peak learning rate (AdamW), at most 1: Adam moves every weight by about this much per step",
    )
    min_lr: float = Field(3e-4, ge=0, le=MAX_LR, description="cosine decay ends here at max_steps (at most 1, as lr)")
    warmup_steps: int = Field(50, ge=0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay, applied to matrices only")
    beta2: float = Field(0.99, gt=0, lt=1, description="AdamW second-moment decay (beta1 is 0.9)")
    max_steps: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        2000,
        description="total optimizer steps (a resumed run counts from its checkpoint); `auto` (with max_minutes): "
        "time the first steps, then fix the total so the schedule ends inside the budget",
    )
    decay_steps: int | None = Field(
        None, gt=0, description="cosine horizon; none = max_steps (set it to extend a run on the same schedule)"
    )
    grad_clip: float = Field(5.0, ge=0, description="clip the global gradient norm to this; 0 disables")
    grad_accum: int = Field(1, gt=0, description="split each process's streams into this many micro-batches per step")
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="weight averaging: evaluate, keep and export a moving average of the weights; 0 = off",
    )
    state_reset: float = Field(
        0.01, ge=0, lt=1, description="chance, per stream and window, of starting from a zero state as sampling does"
    )
    activation_reg: float = Field(
        0.0, ge=0, description="AR (AWD-LSTM): adds this x mean(h^2) of the last layer's output to the loss"
    )
    temporal_reg: float = Field(
        0.0, ge=0, description="TAR (AWD-LSTM): adds this x mean((h_t - h_{t-1})^2) of the same output"
    )
    input_noise: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="chance, per input character, of replacing it by a uniformly drawn one (targets kept)",
    )
    seed: int = Field(
        1337,
        ge=0,
        le=MAX_SEED,
        description="weight init and dropout masks (dropout is keyed by seed, step and stream); 0 to 2^64 - 1",
    )
    eval_every: int = Field(250, gt=0, description="evaluate every this many steps (and at the end)")
    eval_chars: int | None = Field(
        1_000_000,
        description="each evaluation scores at most this many characters of the validation split: the same part "
        "every time, for any number of processes (its B streams, each cut to eval_chars // B); none = the whole "
        "split. The default covers Tiny Shakespeare's; it keeps an evaluation's cost flat on any corpus",
    )
    sample_chars: int = Field(
        200, ge=0, description="at each evaluation, sample this many characters (top-k 5, fixed seed); 0 = off"
    )
    sample_prime: str | None = Field(
        None, description="the samples' prime; none = the first line of the validation split"
    )
    save_every: int = Field(250, gt=0, description="write ckpt.pt every this many steps (and at the end)")
    log_every: int = Field(10, gt=0, description="log train loss and speed every this many steps")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="`auto`: what the hardware runs natively (trainer/dist/precision.py); `no` (fp32), `bf16` (a GPU "
        "with bf16, or a CPU with AVX-512 BF16 or AMX) or `fp16` (CUDA only, loss scaling)",
    )
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget in minutes: the run stops with a final eval and save"
    )
    log_with: Literal["none", "tensorboard", "wandb", "all"] = Field(
        "none", description="trackers beside metrics.jsonl, through accelerate: none, tensorboard, wandb or all"
    )
    init_from: str | None = Field(
        None, description="a ckpt.pt or best.pt whose weights a new run starts from (fine-tuning)"
    )
    collective_timeout: float = Field(
        300.0,
        gt=0,
        le=MAX_COLLECTIVE_TIMEOUT,
        description="seconds a process waits for the others in one collective (several processes): a peer that hung "
        "or vanished ends the run with one line instead of a hang (gloo's default: 30 min); at most a week (604800)",
    )

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        if self.max_steps == "auto" and self.max_minutes is None:
            raise PydanticCustomError(
                "combination", "config key 'train.max_steps' is auto: set train.max_minutes, the budget it fills"
            )
        if self.eval_chars is not None and self.eval_chars < self.batch_size:
            raise PydanticCustomError(
                "combination",
                f"config key 'train.eval_chars' must be at least train.batch_size={self.batch_size} (one character "
                f"per stream), got {self.eval_chars}; none scores the whole validation split",
            )
        return self


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig, description="the corpus")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network's shape")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimization and its schedule")
    out_dir: str = Field(
        "runs/default",
        min_length=1,
        description="the run directory: ckpt.pt, best.pt, metrics.jsonl, config.yaml, loss.png",
    )

    def to_dict(self) -> dict:
        return self.model_dump()


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
