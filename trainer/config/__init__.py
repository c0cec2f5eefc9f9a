"""The run's configuration: the schema (schema.py: every key's type, default, range and meaning), how a YAML
file and `key.sub=value` overrides fill it in (load.py), and the keys' documentation for `--help` and
docs/config.md (docs.py; `python -m trainer.config` prints its table)."""

from trainer.config.load import from_dict, load_config, load_yaml, save_config
from trainer.config.schema import Config, DataConfig, ModelConfig, TrainConfig, check_processes
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
    "save_config",
]
