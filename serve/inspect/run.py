"""Read a text through the model one character at a time (batch 1, the zero state first, as serve.score
--streams 1 does) and collect what the issue's report shows: each character's surprise and the model's top 5
guesses for it, every cell's correlation with the text's features, gate saturation.

The per-character loop only runs onnxruntime and copies h, c and the logits into a chunk (CHUNK steps); all
the arithmetic is done per chunk with numpy, and what a chunk leaves behind is sums, the per-character figures
and the cells' traces quantized to int8 (for the cells the report shows), so memory is bounded by --max-chars.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.inspect.correlate import Correlations, ranked
from serve.inspect.features import all_features, parse_feature
from serve.inspect.gates import GateError, Saturation, read_layers
from serve.sampler import Sampler, SamplerError

DEFAULT_MAX_CHARS = 20_000
CHUNK = 512  # steps per numpy pass: (CHUNK, 2 L H) float64 at most at a time
TOP = 5
SHOWN = 3  # cells per feature whose trace the report keeps


class Reader:
    """onnxruntime at batch 1 with h, c and logits bound to numpy buffers (no copy out of onnxruntime); two
    bindings alternate so that one step's output state is the next one's input, as serve.sampler.StepLoop."""

    def __init__(self, session: ort.InferenceSession, layers: int, hidden: int, vocab: int):
        self.session = session
        self.token = np.zeros(1, dtype=np.int64)
        self.logits = np.zeros((1, vocab), dtype=np.float32)
        self.states = [np.zeros((layers, 1, hidden), dtype=np.float32) for _ in range(4)]  # h0, c0, h1, c1
        values = [ort.OrtValue.ortvalue_from_numpy(s) for s in self.states]
        self.bindings = []
        for h_in, c_in, h_out, c_out in ((0, 1, 2, 3), (2, 3, 0, 1)):
            binding = session.io_binding()
            binding.bind_ortvalue_input("token", ort.OrtValue.ortvalue_from_numpy(self.token))
            binding.bind_ortvalue_input("h", values[h_in])
            binding.bind_ortvalue_input("c", values[c_in])
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
            binding.bind_ortvalue_output("h_out", values[h_out])
            binding.bind_ortvalue_output("c_out", values[c_out])
            self.bindings.append(binding)
        self.steps = 0

    def read(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray, logits: np.ndarray) -> None:
        """Advance over ids (T,), writing the state after each step into h, c (T, L, H) and logits (T, V)."""
        run, bindings, token, states = self.session.run_with_iobinding, self.bindings, self.token, self.states
        for k, id_ in enumerate(ids):
            token[0] = id_
            parity = self.steps & 1
            run(bindings[parity])
            self.steps += 1
            h[k] = states[2 - 2 * parity][:, 0]
            c[k] = states[3 - 2 * parity][:, 0]
            logits[k] = self.logits[0]


def prepare(sampler: Sampler, text: str, unknown: str, max_chars: int | None) -> tuple[np.ndarray, str, int]:
    """(ids, the text as the model reads it, the length before --max-chars cut it)."""
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise SamplerError(f"max_chars must be an integer >= 1, got {max_chars!r}")
    if text == "":
        raise SamplerError("the text is empty")
    ids = sampler.encode(text, unknown)
    full = len(ids)
    ids = ids[:max_chars] if max_chars is not None else ids
    if len(ids) < 2:
        raise SamplerError("the text needs at least 2 characters the model knows")
    return ids, "".join(sampler.vocab[i] for i in ids), full


def surprise(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits (T, V) float32, targets (T,) -> bits (T,), top ids (T, 5) best first (the lower id among equal
    logits), their probabilities (T, 5); in float64, log-sum-exp as serve.score."""
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    log_z = top + np.log(np.exp(x - top[:, None]).sum(axis=1))  # (T,)
    bits = (log_z - x[np.arange(len(x)), targets]) / math.log(2)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :TOP]  # (T, 5)
    probs = np.exp(np.take_along_axis(x, order, axis=1) - log_z[:, None])
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
) -> dict:
    """The figures of the report (and of --json) for `text` under the .onnx `model` (a path, or an
    InspectModel): bpc, positions, features (the ranked cells), saturation, traces (int8 activations x 127 of
    the cells shown), model."""
    user = [parse_feature(spec) for spec in features]
    loaded = model if isinstance(model, InspectModel) else InspectModel(model)
    sampler, gate_error = loaded.sampler, loaded.gate_error
    ids, read, full = prepare(sampler, text, unknown, max_chars)
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
    h_last, c_last = np.zeros((1, layers, hidden), np.float32), np.zeros((1, layers, hidden), np.float32)
    for start in range(0, n, CHUNK):
        span = ids[start : start + CHUNK]
        h, c = np.empty((len(span), layers, hidden), np.float32), np.empty((len(span), layers, hidden), np.float32)
        logits = np.empty((len(span), vocab), np.float32)
        reader.read(span, h, c, logits)
        if saturation is not None:
            h_prev, c_prev = np.concatenate([h_last, h[:-1]]), np.concatenate([c_last, c[:-1]])
            saturation.update(span, h_prev, c_prev, h, c)
        h_last, c_last = h[-1:], c[-1:]
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
