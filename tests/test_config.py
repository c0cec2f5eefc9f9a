import re
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 128\ntrain:\n  mixed_precision: no\n  lr: 1e-3\n")
    cfg = load_config(path, ["train.max_steps=40", "model.dropout=0", "out_dir=runs/x", "train.max_minutes=2.5"])
    assert cfg.model.hidden == 128 and cfg.train.mixed_precision == "no" and cfg.train.lr == 1e-3
    assert cfg.train.max_steps == 40 and cfg.model.dropout == 0.0 and cfg.out_dir == "runs/x"
    assert cfg.train.max_minutes == 2.5 and cfg.data.val_fraction == 0.1
    assert cfg.train.mixed_precision == "no"  # as the file says; the default is auto
    assert load_config(None, []).train.mixed_precision == "auto"
    assert load_config(None, ["train.max_steps=auto", "train.max_minutes=3"]).train.max_steps == "auto"


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path):
    """A misspelt key or a bad value in a shipped recipe would otherwise surface only when a user runs it."""
    cfg = load_config(path, [])
    assert cfg.train.mixed_precision == "auto" and cfg.out_dir.startswith("runs/")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("model.hidden=big", "config key 'model.hidden' must be an integer, got 'big'"),
        ("model.hidden=1.5", "config key 'model.hidden' must be an integer, got 1.5"),
        ("train.lr=fast", "config key 'train.lr' must be a number, got 'fast'"),
        ("model.hidden=0", "'model.hidden' must be > 0"),
        ("train.batch_size=-4", "'train.batch_size' must be > 0"),
        ("train.seq_len=0", "'train.seq_len' must be > 0"),
        ("model.dropout=1.5", "'model.dropout' must be in"),
        ("model.weight_drop=1", "'model.weight_drop' must be in"),
        ("train.ema_decay=-0.5", "'train.ema_decay' must be in"),
        ("train.state_reset=1.5", "'train.state_reset' must be in"),
        ("train.input_noise=1", "'train.input_noise' must be in"),
        ("train.activation_reg=-1", "'train.activation_reg' must be >= 0"),
        ("train.temporal_reg=-0.5", "'train.temporal_reg' must be >= 0"),
        ("data.val_fraction=0", "'data.val_fraction' must be in"),
        ("train.mixed_precision=fp8", "'train.mixed_precision' must be auto, no, bf16 or fp16"),
        ("train.log_with=mlflow", "'train.log_with' must be none, tensorboard, wandb or all"),
        ("data.normalize=NFD", "'data.normalize' must be NFC, NFKC or none"),
        ("train.max_steps=soon", "'train.max_steps' must be an integer or auto"),
        ("train.max_steps=auto", "'train.max_steps' is auto: set train.max_minutes"),
        ("train.max_steps=0", "'train.max_steps' must be > 0"),
        ("train.lr=0", "'train.lr' must be in (0, 1], got 0"),
        ("train.lr=1e38", "'train.lr' must be in (0, 1], got 1e+38"),
        ("train.min_lr=1.5", "'train.min_lr' must be in [0, 1], got 1.5"),
        ("train.min_lr=-1e-4", "'train.min_lr' must be in [0, 1], got -0.0001"),
        ("train.collective_timeout=0", "'train.collective_timeout' must be in (0, 604800], got 0"),
        ("train.collective_timeout=1e300", "'train.collective_timeout' must be in (0, 604800], got 1e+300"),
        ("train.seed=18446744073709551616", "'train.seed' must be in [0, 18446744073709551615]"),
        ("train=3", "config key 'train': expected a mapping"),
        ("train.lr=.inf", "config key 'train.lr' must be a finite number, got inf"),
        ("model.locked_dropout=1", "config key 'model.locked_dropout' must be true or false, got 1"),
        ("train.eval_chars=a", "config key 'train.eval_chars' must be an integer or null, got 'a'"),
        ("train.decay_steps=0", "config key 'train.decay_steps' must be > 0, got 0"),
        ("out_dir=", "config key 'out_dir' must not be empty"),
        ("hidden", "not of the form key.sub=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_the_upper_bounds_are_themselves_accepted():
    """The limits of train.lr, train.min_lr (1), train.collective_timeout (a week) and train.seed (2^64 - 1)
    are legal values: the bounds refuse only what lies past them (the shipped configs: the test above)."""
    limits = ["train.lr=1", "train.min_lr=1", "train.collective_timeout=604800", f"train.seed={2**64 - 1}"]
    t = load_config(None, limits).train
    assert (t.lr, t.min_lr, t.collective_timeout, t.seed) == (1.0, 1.0, 604800.0, 2**64 - 1)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


def test_a_shipped_config_by_its_name(tmp_path, monkeypatch):
    """`--config tiny` is configs/tiny.yaml, from any folder; a file of that name in the folder wins; a name that
    is neither is one line listing the names; an installed wheel's copy serves where the repository's is absent."""
    import trainer.config.shipped as shipped
    from trainer.config import resolve_config, shipped_configs

    root = Path(__file__).parent.parent
    assert set(shipped_configs()) == {p.stem for p in (root / "configs").glob("*.yaml")} >= {"tiny", "shakespeare"}
    monkeypatch.chdir(root)
    assert resolve_config("tiny") == Path("configs/tiny.yaml")  # as a user in the repository writes it
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tiny") == root / "configs" / "tiny.yaml"
    assert load_config("tiny", ["out_dir=x"]) == load_config(root / "configs" / "tiny.yaml", ["out_dir=x"])
    (tmp_path / "tiny").write_text("model:\n  hidden: 33\n")
    assert load_config("tiny").model.hidden == 33
    names = ", ".join(sorted(p.stem for p in (root / "configs").glob("*.yaml")))
    with pytest.raises(
        ConfigError, match=re.escape(f"config 'tinny' is neither a file nor a shipped config name ({names})")
    ):
        load_config("tinny")
    with pytest.raises(ConfigError, match="config file 'configs/nope.yaml' not found"):
        load_config("configs/nope.yaml")
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "tiny.yaml").write_text("model:\n  hidden: 44\n")
    monkeypatch.setattr(shipped, "FOLDERS", (tmp_path / "no-repository", installed))
    assert load_config("tiny", []).model.hidden == 33  # the folder's own file still wins
    (tmp_path / "tiny").unlink()
    assert load_config("tiny", []).model.hidden == 44


@pytest.mark.parametrize(
    ("script", "module"),
    [
        ("charlstm-train", "trainer.train"),
        ("charlstm-export", "export.onnx"),
        ("charlstm-sample", "serve.sample"),
        ("charlstm-score", "serve.score"),
        ("charlstm-launch", "trainer.launch"),
    ],
)
def test_console_scripts(script, module):
    """The console scripts of pyproject.toml run the same programs as `python -m`."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(sys.executable).parent / script
    assert path.is_file(), f"{script} is not installed (pip install -e .)"
    by_script = subprocess.run([str(path), "--help"], capture_output=True, text=True)
    by_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout


def test_config_page_and_help_list_every_key_from_one_source():
    """`--help` and docs/config.md's table both come from the schema's field descriptions: they cannot drift."""
    from trainer.config import Config
    from trainer.config.docs import describe, help_text, markdown_table

    page = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text(encoding="utf-8")
    assert markdown_table() in page
    keys = [key for key, _, _ in describe()]
    expected = [f"{s}.{name}" for s in ("data", "model", "train") for name in type(getattr(Config(), s)).model_fields]
    assert keys == [*expected, "out_dir"]
    assert all(meaning for _, _, meaning in describe())  # every key documented
    text = help_text()
    assert all(key in text for key in keys) and "(default: auto)" in text
