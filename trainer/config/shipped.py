"""The configs that come with charlstm, by name: `--config tiny` is configs/tiny.yaml. In the repository they
are configs/; an installed wheel carries them in the folder `shipped` beside this module (setup.py puts them
there)."""

from __future__ import annotations

from pathlib import Path

from trainer.errors import ConfigError

HERE = Path(__file__).resolve().parent
FOLDERS = (HERE.parents[1] / "configs", HERE / "shipped")  # the repository's, then the installed package's


def shipped_configs() -> dict[str, Path]:
    """Name -> file of every shipped config, the repository's first where both exist."""
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


def resolve_config(spec: str | Path) -> Path:
    """A config file: `spec` itself when it names a file (or looks like a path: it has a folder or a .yaml /
    .yml ending), else the shipped config of that name (relative to the current folder when it is inside it).
    Raises ConfigError for a name that is neither."""
    path = Path(spec)
    text = str(spec)
    if path.exists() or "/" in text or path.suffix in (".yaml", ".yml"):
        return path
    shipped = shipped_configs()
    if text in shipped:
        found = shipped[text]
        return found.relative_to(Path.cwd()) if found.is_relative_to(Path.cwd()) else found  # as a user writes it
    names = ", ".join(shipped) or "none are installed"
    raise ConfigError(f"config {text!r} is neither a file nor a shipped config name ({names})")
