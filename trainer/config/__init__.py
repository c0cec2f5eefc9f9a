"""The run's configuration: the schema (schema.py: every key's type, default, range and meaning), how a YAML
file (a path, or a shipped config's name: shipped.py) and `key.sub=value` overrides fill it in (load.py), and
the keys' documentation for `--help` and docs/config.md (docs.py; `python -m trainer.config` prints its
table)."""

from trainer.config.load import from_dict, load_config, load_yaml, save_config
from trainer.config.schema import Config, DataConfig, ModelConfig, TrainConfig, check_processes
from trainer.config.shipped import resolve_config, shipped_configs
from trainer.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "check_processes",
    "from_dict",
    "load_config",
    "load_yaml",
    "resolve_config",
    "save_config",
    "shipped_configs",
]
