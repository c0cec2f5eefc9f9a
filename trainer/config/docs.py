"""The config keys documented from one source, the schema's fields (trainer/config/schema.py): each field's
description. `python -m trainer.train --help` lists them (`help_text`) and docs/config.md's table is
`markdown_table` (`python -m trainer.config` prints it); a test keeps the page equal to it."""

from __future__ import annotations

import json
from typing import Any

from trainer.config.schema import Config


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value)  # "\n\n", as it is written in YAML
    return str(value)


def describe() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every config key, in the schema's order."""
    rows = []
    defaults = Config()
    for section in ("data", "model", "train"):
        values = getattr(defaults, section)
        rows += [
            (f"{section}.{name}", format_value(getattr(values, name)), info.description)
            for name, info in type(values).model_fields.items()
        ]
    rows.append(("out_dir", defaults.out_dir, Config.model_fields["out_dir"].description))
    return rows


def help_text() -> str:
    """Every config key with its default and meaning, for `python -m trainer.train --help`."""
    width = max(len(key) for key, _, _ in describe())
    return "\n".join(f"  {key:<{width}}  {meaning} (default: {default})" for key, default, meaning in describe())


def markdown_table() -> str:
    """The configuration table of docs/config.md: `python -m trainer.config` prints it."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {meaning} |" for key, default, meaning in describe()]
    return "\n".join(rows)
