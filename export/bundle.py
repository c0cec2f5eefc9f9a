"""`python -m export.bundle CKPT [--name NAME] [--out-dir serve/models]`: the model that ships inside charlstm.

Exports the checkpoint to ONNX twice (fp32 and int8), scores both on the run's whole validation split, and keeps
int8 when it is within INT8_NATS of fp32 (a smaller wheel), else fp32: NAME.onnx. Beside it NAME.md, the model
card: the command that trains it again (the shipped config it was trained from, with any key that differs from
it), its steps, the machine, the validation loss and bpc, the sha256, and a seeded sample with the command that
gives it again. The programs take the bundled model when no model is named (serve/pretrained.py).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from export.onnx import DEFAULT_OPSET, export, normal_form
from trainer.checkpoint import load_checkpoint
from trainer.config import load_config, shipped_configs
from trainer.data import ReadOptions, load_corpus, split
from trainer.errors import UserError

INT8_NATS = 0.02  # int8 ships when its validation loss is at most this much above fp32's
SAMPLE = {"prime": "ROMEO:", "length": 400, "top_k": 5, "seed": 0}  # the card's sample, and its command
MODELS = Path(__file__).resolve().parents[1] / "serve" / "models"


def flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe(config: dict) -> tuple[str, list[str]]:
    """The shipped config this run's config is nearest to, and the `key=value` overrides that make it this one
    (out_dir aside)."""
    run = flatten(config)
    best: tuple[str, list[str]] | None = None
    for name in shipped_configs():
        shipped = flatten(load_config(name).model_dump())
        keys = sorted(k for k in run.keys() | shipped.keys() if k != "out_dir" and run.get(k) != shipped.get(k))
        overrides = [f"{key}={yaml.safe_dump(run.get(key), default_flow_style=True).strip()}" for key in keys]
        overrides = [text.removesuffix("\n...") for text in overrides]
        if best is None or len(overrides) < len(best[1]):
            best = (name, overrides)
    if best is None:
        raise UserError("no shipped config found (configs/*.yaml)")
    return best


def validation_text(ckpt: dict) -> str:
    """The run's whole validation split, from its corpus (which must be at hand and unchanged)."""
    data = ckpt["config"]["data"]
    corpus = load_corpus(data["path"], data.get("cache_dir"), normal_form(ckpt), ReadOptions.of(data), notes=False)
    if corpus.sha256 != ckpt.get("corpus_sha256"):
        raise UserError(f"the corpus {data['path']!r} is not the one this checkpoint was trained on")
    _, val = split(corpus.ids, data.get("val_fraction", 0.1))
    return corpus.decode(np.asarray(val))


def machine() -> str:
    """The CPU's name, its cores and whether it runs bf16 natively (what decides a run's steps)."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else None
    return f"{name}, {os.cpu_count()} cores" + (f", native bf16 ({bf16})" if bf16 else ", no native bf16")


def bundle(ckpt_path: Path, name: str, out_dir: Path) -> list[str]:
    from serve.sampler import Sampler
    from serve.score import score

    ckpt = load_checkpoint(ckpt_path)
    config_name, overrides = recipe(ckpt["config"])
    text = validation_text(ckpt)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out_dir) as tmp:
        paths = {kind: Path(tmp) / f"{kind}.onnx" for kind in ("fp32", "int8")}
        for kind, path in paths.items():
            export(ckpt_path, path, DEFAULT_OPSET, kind == "int8", None, int8_limit=100.0)
        streams = ckpt["config"]["train"]["batch_size"]
        losses = {kind: score(Sampler(path, device="cpu"), text, streams=streams) for kind, path in paths.items()}
        kind = "int8" if losses["int8"] - losses["fp32"] <= INT8_NATS else "fp32"
        model = out_dir / f"{name}.onnx"
        os.replace(paths[kind], model)
    sample = Sampler(model, device="cpu").generate(SAMPLE["prime"], SAMPLE["length"], **_options())
    card = card_text(name, ckpt, config_name, overrides, kind, losses, len(text), model, sample)
    (out_dir / f"{name}.md").write_text(card, encoding="utf-8")
    return [f"wrote {model} ({kind}, {model.stat().st_size / 1e6:.2f} MB) and {out_dir / f'{name}.md'}"]


def _options() -> dict:
    return {"top_k": SAMPLE["top_k"], "seed": SAMPLE["seed"]}


def card_text(
    name: str,
    ckpt: dict,
    config_name: str,
    overrides: list[str],
    kind: str,
    losses: dict[str, float],
    chars: int,
    model: Path,
    sample: str,
) -> str:
    train = shlex.join(["charlstm-train", "--config", config_name, *overrides, f"out_dir=runs/{name}"])
    int8 = " --int8" if kind == "int8" else ""
    sample_cmd = shlex.join(
        ["charlstm-sample", "--prime", SAMPLE["prime"], "--length", str(SAMPLE["length"])]
        + ["--top-k", str(SAMPLE["top_k"]), "--seed", str(SAMPLE["seed"])]
    )
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    cfg = ckpt["config"]
    shape = f"{cfg['model']['layers']} x {cfg['model']['hidden']}, embedding {cfg['model']['embed']}"
    rows = [f"| {k} | {v:.4f} | {v / math.log(2):.4f} |" for k, v in losses.items()]
    return f"""# The bundled model: {name}

A character LSTM ({shape}, {len(ckpt["vocab"])} characters) trained on Tiny Shakespeare (public domain),
the last {100 * cfg["data"]["val_fraction"]:g}% of the text held out as the validation split. It is what
`charlstm-sample`, `charlstm-web`, `charlstm-serve` and `charlstm-inspect` use when no model is named, and
`Sampler.pretrained()`.

Trained again with (then exported{int8}):

```
{train}
charlstm-export runs/{name}/best.pt{int8} -o {name}.onnx
```

- steps: {ckpt["step"]:,}
- machine: {machine()}
- the trainer's validation loss: {ckpt["val_loss"]:.4f} nats ({ckpt["val_loss"] / math.log(2):.4f} bpc)
- this file: {kind}, {model.stat().st_size:,} bytes, sha256 `{sha}`

On the whole validation split ({chars:,} characters, as the trainer reads it), exported:

| weights | nats | bpc |
|---|---|---|
{chr(10).join(rows)}

A sample (`{sample_cmd}`):

```
{SAMPLE["prime"]}{sample}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export.bundle", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("checkpoint", help="best.pt of a run of a shipped config")
    parser.add_argument("--name", default="shakespeare", help="the bundled model's name (default shakespeare)")
    parser.add_argument("--out-dir", default=str(MODELS), help="where it goes (default: serve/models/)")
    args = parser.parse_args(argv)
    try:
        report = bundle(Path(args.checkpoint), args.name, Path(args.out_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
