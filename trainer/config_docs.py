"""The config keys documented from one source, the dataclasses of trainer/config.py: each field's docstring or
trailing comment. `python -m trainer.train --help` lists them (`help_text`) and docs/config.md's table is
`markdown_table` (`python -m trainer.config` or `python -m trainer.config_docs` prints it); a test keeps the
page equal to it."""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from dataclasses import fields
from typing import Any

from trainer.config import Config


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation as written in the class: the docstring under it, else its trailing comment
    and the comment lines that continue it. `--help` and the table of docs/config.md both come from here."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    body = ast.parse(source).body[0].body
    docs = {}
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign):
            continue
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
            continue
        parts, line = [comments.get(node.lineno, "")], node.end_lineno + 1
        while line <= len(lines) and lines[line - 1].strip().startswith("#"):
            parts.append(comments[line])
            line += 1
        docs[node.target.id] = " ".join(part for part in parts if part)
    return docs


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every config key, in the order of the dataclasses."""
    rows = []
    defaults = Config()
    for section in ("data", "model", "train"):
        values = getattr(defaults, section)
        docs = field_docs(type(values))
        rows += [(f"{section}.{f.name}", format_value(getattr(values, f.name)), docs[f.name]) for f in fields(values)]
    rows.append(("out_dir", defaults.out_dir, field_docs(Config)["out_dir"]))
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


if __name__ == "__main__":
    print(markdown_table())
