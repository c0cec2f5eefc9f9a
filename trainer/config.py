"""Typed configuration. YAML files and `key.sub=value` overrides only fill these dataclasses in.

Every field is checked: an unknown key, a value of the wrong type or an out-of-range value raises
ConfigError naming the key, which the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config_checks import check_processes as check_processes  # re-exported: its callers' import
from trainer.config_checks import validate
from trainer.errors import ConfigError
from trainer.errors import UserError as UserError  # re-exported: trainer/checkpoint.py imports it from here


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans, so `mixed_precision: no` is the
    string "no" (YAML 1.1 would read no/yes/on/off as booleans)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_Yaml12Loader.add_implicit_resolver(  # 1e-3 is a float in YAML 1.2 (1.1 wants a dot: 1.0e-3)
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class DataConfig:
    path: str = "tinyshakespeare"
    """a UTF-8 text file, a folder (its files joined), a glob, `tinyshakespeare` (downloaded once,
    sha256-checked), `builtin:python-docs` (the Python reference documentation that ships with every CPython:
    465k characters) or `builtin:python-stdlib` (the standard library's source: 31M characters)"""
    val_fraction: float = 0.1
    """the LAST this fraction of the corpus is the validation split; training uses what comes before"""
    normalize: str = "NFC"
    """Unicode form the text is put into before its vocabulary is built: `NFC`, `NFKC` or `none` (the code
    points as they are); stored with the vocabulary, and samplers put a prime into the same form"""
    cache_dir: str | None = None
    """where the encoded corpus is cached (in its ids/ folder); none = $XDG_CACHE_HOME/charlstm, else
    ~/.cache/charlstm"""


@dataclass
class ModelConfig:
    embed: int = 64  # character embedding size; the first layer's input projection folds into a table
    hidden: int = 512  # LSTM hidden size H
    layers: int = 2  # stacked LSTM layers
    dropout: float = 0.25  # between LSTM layers and before the output head (training only)
    locked_dropout: bool = False  # one mask per stream and window, shared by its T steps (AWD-LSTM style)
    weight_drop: float = 0.0  # DropConnect on the recurrent matrices W_hh, one mask per step (AWD-LSTM)


@dataclass
class TrainConfig:
    batch_size: int = 64  # GLOBAL number of parallel character streams, split evenly over processes
    seq_len: int = 100  # truncated-BPTT window T; state is carried from one window to the next
    lr: float = 3e-3  # peak learning rate (AdamW), at most 1: Adam moves every weight by about this much per step
    min_lr: float = 3e-4  # cosine decay ends here at max_steps (at most 1, as lr)
    warmup_steps: int = 50  # linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay, applied to matrices only
    beta2: float = 0.99  # AdamW second-moment decay (beta1 is 0.9)
    max_steps: int | str = 2000  # total optimizer steps (a resumed run counts from its checkpoint); `auto` (with
    # max_minutes): time the first steps, then fix the total so the schedule ends inside the budget
    decay_steps: int | None = None  # cosine horizon; none = max_steps (set it to extend a run on the same schedule)
    grad_clip: float = 5.0  # clip the global gradient norm to this; 0 disables
    grad_accum: int = 1  # split each process's streams into this many micro-batches per step
    ema_decay: float = 0.0  # weight averaging: evaluate, keep and export a moving average of the weights; 0 = off
    state_reset: float = 0.01  # chance, per stream and window, of starting from a zero state as sampling does
    activation_reg: float = 0.0  # AR (AWD-LSTM): adds this x mean(h^2) of the last layer's output to the loss
    temporal_reg: float = 0.0  # TAR (AWD-LSTM): adds this x mean((h_t - h_{t-1})^2) of the same output
    input_noise: float = 0.0  # chance, per input character, of replacing it by a uniformly drawn one (targets kept)
    seed: int = 1337  # weight init and dropout masks (dropout is keyed by seed, step and stream); 0 to 2^64 - 1
    eval_every: int = 250  # evaluate every this many steps (and at the end)
    eval_chars: int | None = 1_000_000  # each evaluation scores at most this many characters of the validation
    # split: the same part every time, for any number of processes (its B streams, each cut to eval_chars // B);
    # none = the whole split. The default covers Tiny Shakespeare's; it keeps an evaluation's cost flat on any corpus
    sample_chars: int = 200  # at each evaluation, sample this many characters (top-k 5, fixed seed); 0 = off
    sample_prime: str | None = None  # the samples' prime; none = the first line of the validation split
    save_every: int = 250  # write ckpt.pt every this many steps (and at the end)
    log_every: int = 10  # log train loss and speed every this many steps
    mixed_precision: str = "auto"  # `auto`: what the hardware runs natively (trainer/precision.py); `no` (fp32),
    # `bf16` (a GPU with bf16, or a CPU with AVX-512 BF16 or AMX) or `fp16` (CUDA only, loss scaling)
    max_minutes: float | None = None  # wall-clock budget in minutes: the run stops with a final eval and save
    log_with: str = "none"  # trackers beside metrics.jsonl, through accelerate: none, tensorboard, wandb or all
    init_from: str | None = None  # a ckpt.pt or best.pt whose weights a new run starts from (fine-tuning)
    collective_timeout: float = 300.0  # seconds a process waits for the others in one collective (several
    # processes): a peer that hung or vanished ends the run with one line instead of a hang (gloo's default: 30 min);
    # at most a week (604800)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/default"  # the run directory: ckpt.pt, best.pt, metrics.jsonl, config.yaml, loss.png

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return value if it fits the annotation (ints are accepted for floats), else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
        raise ConfigError(f"config key {key!r}: expected {names}, got {value!r}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"config key {key!r}: expected {annotation.__name__}, got {value!r}")


def _fill(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping")
    types_of = typing.get_type_hints(type(obj))  # the field annotations, resolved (they are strings here)
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_of:
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(prefix + f for f in types_of)})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _fill(current, value, key + ".")
        else:
            setattr(obj, name, _check_type(key, value, types_of[name]))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _fill(cfg, values)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then dotted overrides; validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} not found")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} is not a file")
        try:
            values = load_yaml(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    cfg = Config()
    _fill(cfg, values)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _fill(cfg, nested)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


if __name__ == "__main__":  # the table of docs/config.md
    from trainer.config_docs import markdown_table

    print(markdown_table())
