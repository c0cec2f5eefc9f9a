"""`python -m export.onnx CKPT [-o OUT.onnx] [--opset N] [--int8]`: the single-step LSTM cell to ONNX.

Graph (docs/serving.md, Export): token int64 (batch,), h and c float32 (layers, batch, hidden) -> logits float32
(batch, vocab), h_out, c_out; batch is dynamic. It is CharLSTM.cell traced by torch's dynamo exporter,
with the embedding and the first layer's input projection folded into one (vocab, 4*hidden) table,
so it is Gather, MatMul, Add, Split, Sigmoid, Tanh, Mul: ops every runtime has (WebGL, WebGPU, mobile),
as fast as the fused ONNX LSTM op on a CPU. One self-contained file, the vocabulary in its metadata.

Every export verifies itself before the file appears (export/verify.py): onnx.checker, then onnxruntime
against the PyTorch `step` over 200 characters of text at batch 1 and 4 (max |logits difference| <= 1e-4),
and 500 greedy characters that must be identical. --int8 quantizes the weights (dynamic quantization) and
checks that the loss on a text stays within --int8-limit percent (default 2) of fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.verify import PARITY_CHARS, PRIME_CHARS, verify
from trainer.checkpoint import load_checkpoint
from trainer.config import ConfigError, from_dict
from trainer.data import ReadOptions, load_corpus, split, user_cache_dir
from trainer.errors import UserError
from trainer.model import CharLSTM, build_model

DEFAULT_OPSET = 18
INT8_LIMIT = 2.0  # percent: the loss increase --int8 accepts by default (--int8-limit)


class ExportCell(nn.Module):
    """CharLSTM.cell with the first layer's input gates looked up from a precomputed (V, 4H) table."""

    def __init__(self, model: CharLSTM):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("token_table", model.token_gates(torch.arange(model.vocab_size)))

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        return self.model.cell(nn.functional.embedding(token, self.token_table), h, c)


def model_from_checkpoint(ckpt: dict, path: Path) -> CharLSTM:
    # Only the model section matters here: a checkpoint from another charlstm version, whose training keys
    # have since been added or dropped, still exports. A model key this version does not know is an error:
    # it could change the network.
    model_section = ckpt["config"].get("model")
    if not isinstance(model_section, dict):
        raise UserError(f"{path}: the checkpoint's config has no model section")
    try:
        cfg = from_dict({"model": model_section})
    except ConfigError as e:
        raise UserError(f"{path}: the checkpoint's model config is not one this charlstm can build ({e})") from None
    model = build_model(len(ckpt["vocab"]), cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{path}: the weights do not fit the checkpoint's config ({str(e).splitlines()[0]})") from None
    return model.eval()


def to_onnx(model: CharLSTM, opset: int) -> onnx.ModelProto:
    """Trace the cell with a dynamic batch; the exporter's chatter is kept off the terminal."""
    cell = ExportCell(model).eval()
    example = (torch.zeros(2, dtype=torch.int64), *model.zero_state(2))
    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            cell,
            example,
            input_names=["token", "h", "c"],
            output_names=["logits", "h_out", "c_out"],
            dynamic_shapes={"token": {0: batch}, "h": {1: batch}, "c": {1: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,  # one self-contained file, weights inside
        )
    return program.model_proto


def set_metadata(proto: onnx.ModelProto, ckpt: dict, weights: str = "fp32") -> None:
    from serve.format import FORMAT  # here, not at the top: serve imports onnxruntime, which export checks for

    values = {
        "format": FORMAT,
        "vocab": json.dumps(ckpt["vocab"]),
        "config": json.dumps(ckpt["config"]),
        "normalize": normal_form(ckpt),
        "step": str(ckpt["step"]),
        "val_loss": "" if ckpt["val_loss"] is None else repr(float(ckpt["val_loss"])),
        "weights": weights,  # fp32 or int8: int8's dynamic quantization scales each batch as a whole
    }
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def normal_form(ckpt: dict) -> str:
    """The Unicode form the model's corpus was put into; a checkpoint from before data.normalize existed was
    trained on the code points as they were: none."""
    return ckpt.get("normalize") or ckpt["config"].get("data", {}).get("normalize") or "none"


def reference_text(ckpt: dict, model: CharLSTM, eval_text: str | None, min_chars: int) -> tuple[str, str]:
    """Text to verify against: --eval-text, else the checkpoint's validation split when its corpus is at
    hand (never downloaded here), else text sampled from the PyTorch model itself."""
    if eval_text is not None:
        try:
            text = Path(eval_text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--eval-text {eval_text}: cannot read it as UTF-8 text ({e})") from None
        known = set(ckpt["vocab"])
        text = "".join(ch for ch in text[:200_000] if ch in known)[:100_000]  # the checks need no more
        if len(text) < min_chars:
            raise UserError(f"--eval-text {eval_text}: needs at least {min_chars} characters the model knows")
        return text, eval_text
    spec = ckpt["config"].get("data", {}).get("path", "")
    at_hand = spec != "tinyshakespeare" or (user_cache_dir() / "tinyshakespeare.txt").is_file()  # no download
    if at_hand:
        try:
            data = ckpt["config"]["data"]
            corpus = load_corpus(spec, data.get("cache_dir"), normal_form(ckpt), ReadOptions.of(data), notes=False)
            if corpus.sha256 == ckpt.get("corpus_sha256") and corpus.vocab == ckpt["vocab"]:
                _, val = split(corpus.ids, ckpt["config"]["data"].get("val_fraction", 0.1))
                if len(val) >= min_chars:  # the checks read at most the first 100k characters of it
                    return corpus.decode(np.asarray(val[:100_000])), f"the validation split of {spec}"
        except UserError:
            pass
    generator = torch.Generator().manual_seed(0)
    token, (h, c), ids = torch.zeros(1, dtype=torch.int64), model.zero_state(1), []
    with torch.no_grad():
        for _ in range(min_chars):
            logits, h, c = model.step(token, h, c)
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            ids.append(int(token))
    return "".join(ckpt["vocab"][i] for i in ids), "text sampled from the PyTorch model (corpus not at hand)"


def quantize_int8(fp32_path: Path, int8_path: Path, ckpt: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    proto = onnx.load(str(int8_path))
    set_metadata(proto, ckpt, weights="int8")
    onnx.save(proto, str(int8_path))


def check_output_path(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"output {out} is a folder")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"output {out} is not writable")


def check_options(opset: int, int8_limit: float) -> None:
    """The numbers of the command line, before any work. Below opset 18 the exporter falls back to 18 or fails
    deep inside onnx's version converter; above the installed onnx's newest it cannot write at all."""
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset}: the exporter writes opsets {DEFAULT_OPSET} to {newest} (the installed onnx)")
    if not math.isfinite(int8_limit):
        raise UserError(f"--int8-limit must be a number of percent, got {int8_limit:g}")


def written_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def export(
    ckpt_path: Path, out: Path | None, opset: int, int8: bool, eval_text: str | None, int8_limit: float = INT8_LIMIT
) -> list[str]:
    check_options(opset, int8_limit)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path)
    if out is None:
        out = ckpt_path.with_suffix(".int8.onnx" if int8 else ".onnx")
    check_output_path(out)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("onnxruntime is missing: pip install 'charlstm[cpu]' (or [gpu])") from None
    try:
        proto = to_onnx(model, opset)
    except Exception as e:  # the exporter raises many types; one line is what a user needs
        raise UserError(f"the ONNX exporter failed at opset {opset}: {str(e).strip().splitlines()[0][:200]}") from None
    if written_opset(proto) != opset:  # the exporter may fall back to another opset without a word
        raise UserError(f"--opset {opset}: the exporter wrote opset {written_opset(proto)} instead; nothing written")
    set_metadata(proto, ckpt)
    text, source = reference_text(ckpt, model, eval_text, min_chars=2 * (PRIME_CHARS + PARITY_CHARS) * 4)
    with tempfile.TemporaryDirectory(dir=out.parent if str(out.parent) else ".", prefix=".export-") as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(fp32_path))
        report = verify(fp32_path, model, ckpt["vocab"], text)
        report.insert(0, f"verified on {source}")
        final = fp32_path
        if int8:
            from serve.sampler import Sampler
            from serve.score import score

            int8_path = Path(tmp) / "model.int8.onnx"
            quantize_int8(fp32_path, int8_path, ckpt)
            loss32 = score(Sampler(fp32_path, device="cpu"), text, streams=16)
            loss8 = score(Sampler(int8_path, device="cpu"), text, streams=16)
            change = (loss8 - loss32) / loss32
            report.append(
                f"int8: {fp32_path.stat().st_size / 1e6:.2f} MB -> {int8_path.stat().st_size / 1e6:.2f} MB; loss "
                f"{loss32 / math.log(2):.4f} -> {loss8 / math.log(2):.4f} bpc ({100 * change:+.2f}%) "
                f"on {len(text):,} chars"
            )
            if 100 * change > int8_limit:
                raise UserError(
                    f"int8 loss is {100 * change:+.2f}% against fp32, over --int8-limit {int8_limit:g}%; "
                    "nothing written"
                )
            final = int8_path
        os.replace(final, out)
    val = ckpt["val_loss"]
    val_text = f", val {val:.4f} nats" if val is not None else ""
    report.insert(0, f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, opset {opset}, step {ckpt['step']}{val_text})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export.onnx", description="Export a charlstm checkpoint's single-step cell to one .onnx file."
    )
    parser.add_argument("checkpoint", help="ckpt.pt or best.pt of a training run")
    parser.add_argument("-o", "--output", help="output .onnx (default: CKPT with the suffix .onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--int8", action="store_true", help="quantize weights to int8 (default out: CKPT.int8.onnx)")
    parser.add_argument(
        "--int8-limit",
        type=float,
        default=INT8_LIMIT,
        help=f"with --int8: the largest loss increase accepted, in percent (default {INT8_LIMIT:g})",
    )
    parser.add_argument("--eval-text", help="UTF-8 text for the checks (default: the validation split if at hand)")
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else None
    try:
        report = export(Path(args.checkpoint), output, args.opset, args.int8, args.eval_text, args.int8_limit)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
