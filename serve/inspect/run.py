"""Read a text through the model one character at a time (batch 1, the zero state first, as serve.score
--streams 1 does) and collect what the issue's report shows: each character's surprise and the model's top 5
guesses for it, every cell's correlation with the text's features, gate saturation.

The per-character loop only runs onnxruntime, which writes h, c and the logits into a chunk (CHUNK steps); all
the arithmetic is done per chunk with numpy, and what a chunk leaves behind is sums, the per-character figures
and the cells' traces quantized to int8 (for the cells the report shows), so memory is bounded by --max-chars.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from serve.inspect.correlate import Correlations, ranked
from serve.inspect.features import all_features, parse_feature
from serve.inspect.gates import GateError, Saturation, read_layers
from serve.logprobs import log_softmax
from serve.sampler import Sampler, SamplerError
from serve.session import bind_step

DEFAULT_MAX_CHARS = 20_000
CHUNK = 512  # steps per numpy pass: (CHUNK, 2 L H) float64 at most at a time
TOP = 5
SHOWN = 3  # cells per feature whose trace the report keeps


class Reader:
    """onnxruntime at batch 1 writing straight into a chunk's buffers: step k of a chunk reads row k of h and c
    and writes row k+1 and logits row k, through one io_binding per step made once. The loop copies nothing
    (a copy of h, c and the logits per step cost about a tenth of the reading on 2 x 512). Row 0 holds the
    state the chunk starts from; the next chunk starts from the last row."""

    def __init__(self, session: ort.InferenceSession, layers: int, hidden: int, vocab: int, chunk: int = CHUNK):
        self.token = np.zeros(1, dtype=np.int64)
        self.h = np.zeros((chunk + 1, layers, 1, hidden), dtype=np.float32)  # (CHUNK+1, L, 1, H)
        self.c = np.zeros((chunk + 1, layers, 1, hidden), dtype=np.float32)
        self.logits = np.zeros((chunk, 1, vocab), dtype=np.float32)  # (CHUNK, 1, V)
        value = ort.OrtValue.ortvalue_from_numpy  # wraps the array's memory: onnxruntime writes into it
        token = value(self.token)
        h_rows, c_rows = [value(row) for row in self.h], [value(row) for row in self.c]
        self.run = session.run_with_iobinding
        self.bindings = [
            bind_step(session, token, h_rows[k], c_rows[k], self.logits[k], h_rows[k + 1], c_rows[k + 1])
            for k in range(chunk)
        ]
        self.last = 0  # the row the previous chunk ended on

    def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance over ids (T <= CHUNK,). Returns views, valid until the next read: h and c (T+1, L, H), row 0
        the state before the first step and row k+1 the state after step k; logits (T, V)."""
        self.h[0], self.c[0] = self.h[self.last], self.c[self.last]
        token, run = self.token, self.run
        for id_, binding in zip(ids.tolist(), self.bindings):
            token[0] = id_
            run(binding)
        self.last = len(ids)
        return self.h[: len(ids) + 1, :, 0], self.c[: len(ids) + 1, :, 0], self.logits[: len(ids), 0]


def prepare(
    sampler: Sampler, text: str, unknown: str, max_chars: int | None, what: str = "the text"
) -> tuple[np.ndarray, str, int]:
    """(ids, the text as the model reads it, the length before --max-chars cut it); `what` names the text in
    errors (a file's path)."""
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise SamplerError(f"max_chars must be an integer >= 1, got {max_chars!r}")
    if text == "":
        raise SamplerError("the text is empty")
    ids = sampler.encode(text, unknown, what)
    full = len(ids)
    ids = ids[:max_chars] if max_chars is not None else ids
    if len(ids) < 2:
        raise SamplerError("the text needs at least 2 characters the model knows")
    return ids, "".join(sampler.vocab[i] for i in ids), full


def surprise(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits (T, V) float32, targets (T,) -> bits (T,), top ids (T, 5) best first (the lower id among equal
    logits), their probabilities (T, 5); in float64 (serve/logprobs.py)."""
    logp = log_softmax(logits)  # (T, V)
    bits = -logp[np.arange(len(logp)), targets] / math.log(2)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :TOP]  # (T, 5)
    probs = np.exp(np.take_along_axis(logp, order, axis=1))
    return bits, order, probs


class InspectModel:
    """A model loaded for inspection: its onnxruntime session and the weights the gate check reads. Load once
    to inspect several texts without reading the file again (the page's server, a notebook, the benchmark)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sampler = Sampler(path, device="cpu")  # the state is read back at every step: on a GPU it'd be copied
        try:
            self.layers, self.gate_error = read_layers(path), None
        except (GateError, KeyError, IndexError, ValueError) as e:
            self.layers, self.gate_error = None, f"the graph is not export.onnx's ({e})"


def inspect_text(
    model: str | Path | InspectModel,
    text: str,
    features: list[str] | tuple[str, ...] = (),
    max_chars: int | None = DEFAULT_MAX_CHARS,
    unknown: str = "error",
    what: str = "the text",
) -> dict:
    """The figures of the report (and of --json) for `text` under the .onnx `model` (a path, or an
    InspectModel): bpc, positions, features (the ranked cells), saturation, traces (int8 activations x 127 of
    the cells shown), model. `what` names the text in errors (a file's path)."""
    user = [parse_feature(spec) for spec in features]
    loaded = model if isinstance(model, InspectModel) else InspectModel(model)
    sampler, gate_error = loaded.sampler, loaded.gate_error
    ids, read, full = prepare(sampler, text, unknown, max_chars, what)
    values = all_features(read, user)
    names = list(values)
    feats = np.stack([values[name] for name in names], axis=1)  # (n, F)
    n, layers, hidden, vocab = len(ids), sampler.layers, sampler.hidden, len(sampler.vocab)
    saturation = Saturation(*loaded.layers) if loaded.layers is not None else None
    reader = Reader(sampler.session, layers, hidden, vocab)
    correlations = Correlations()
    traces = np.zeros((n, 2 * layers * hidden), dtype=np.int8)  # (n, C): c of every layer, then h
    bits = np.zeros(n)
    tops, probs = np.zeros((n, TOP), dtype=np.int64), np.zeros((n, TOP))
    # numpy's BLAS threads spin for a while after each GEMM of the gate check, taking a core from onnxruntime's
    # next steps on a small machine: one BLAS thread reads 2 x 512 at 89% of the sampler's rate instead of 72%
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n, CHUNK):
            span = ids[start : start + CHUNK]
            states_h, states_c, logits = reader.read(span)  # (T+1, L, H): the state before each step, and after
            h, c = states_h[1:], states_c[1:]
            if saturation is not None:
                saturation.update(span, states_h[:-1], states_c[:-1], h, c)
            acts = np.concatenate([np.tanh(c).reshape(len(span), -1), h.reshape(len(span), -1)], axis=1)  # (T, C)
            acts = acts.astype(np.float64)  # the correlation sums in float64
            correlations.update(acts, feats[start : start + len(span)])
            traces[start : start + len(span)] = np.rint(acts * 127)
            predicted = min(len(span), n - 1 - start)  # the last step predicts past the text
            t = slice(start + 1, start + 1 + predicted)
            bits[t], tops[t], probs[t] = surprise(logits[:predicted], ids[t])
    ranking = ranked(correlations.r(), names, layers, hidden)
    return {
        "model": {"layers": layers, "hidden": hidden, "vocab": vocab, "normalize": sampler.normalize},
        "chars": n,
        "text_chars": full,
        "bpc": float(bits[1:].sum() / (n - 1)),
        "positions": positions(read, bits, tops, probs, sampler.vocab),
        "features": ranking,
        "saturation": saturation.result() if saturation else {"layers": None, "reason": gate_error, "check": None},
        "traces": shown_traces(traces, ranking, layers, hidden),
    }


def positions(text: str, bits: np.ndarray, tops: np.ndarray, probs: np.ndarray, vocab: list[str]) -> list[dict]:
    out = [{"char": text[0], "bits": None, "top": None}]
    for t in range(1, len(text)):
        top = [[vocab[i], float(p)] for i, p in zip(tops[t], probs[t])]
        out.append({"char": text[t], "bits": float(bits[t]), "top": top})
    return out


def shown_traces(traces: np.ndarray, ranking: dict, layers: int, hidden: int) -> dict[str, list[int]]:
    """{"c 0 17": [int8 activation x 127 per position], ...} for the SHOWN best cells of each feature."""
    out = {}
    for cells in ranking.values():
        for cell in cells[:SHOWN]:
            if cell["r"] is None:
                continue
            key = f"{cell['kind']} {cell['layer']} {cell['unit']}"
            column = (0 if cell["kind"] == "c" else layers * hidden) + cell["layer"] * hidden + cell["unit"]
            out[key] = traces[:, column].tolist()
    return out
