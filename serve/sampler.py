"""Sampler: generate text from an exported charlstm .onnx on onnxruntime, GPU or CPU. No torch.

The .onnx holds one step of the LSTM (token, h, c -> logits, h_out, c_out) and its vocabulary in the
metadata, so the file alone is enough. N samples advance together, one session run per character.
The per-character loop allocates nothing: inputs and outputs are bound once (IOBinding) to preallocated
buffers, and two bindings alternate so h_out of one step is h of the next without a copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

FORMAT = "charlstm-cell/1"


class SamplerError(ValueError):
    """Bad input (model file, option, prime); the CLIs print it as one line."""


def _session_options(threads: int | None, spin: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no provider chatter on stderr
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spin:  # embedded use: do not burn idle cores between calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(path: str | Path, device: str = "auto", threads: int | None = None, spin: bool = True):
    """(session, vocab, config, metadata) for a charlstm .onnx; SamplerError on anything wrong."""
    path = Path(path)
    if device not in ("auto", "cpu", "cuda"):
        raise SamplerError(f"device must be auto, cpu or cuda, got {device!r}")
    if not path.is_file():
        raise SamplerError(f"model {str(path)!r} does not exist" if not path.exists() else f"{path} is not a file")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise SamplerError(
            "device cuda: this onnxruntime has no CUDA provider (install charlstm[gpu], i.e. onnxruntime-gpu)"
        )
    use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
    providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), _session_options(threads, spin), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for any unreadable model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamplerError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        # onnxruntime falls back to the CPU silently when the GPU cannot be used: say so instead.
        raise SamplerError("device cuda: onnxruntime could not use the GPU (no usable CUDA device or libraries)")
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("format") != FORMAT or "vocab" not in metadata:
        raise SamplerError(f"{path}: not a charlstm model (no {FORMAT} metadata; export it with export.onnx)")
    try:
        vocab = json.loads(metadata["vocab"])
        config = json.loads(metadata.get("config", "{}"))
    except json.JSONDecodeError:
        raise SamplerError(f"{path}: its charlstm metadata is not valid JSON") from None
    return session, vocab, config, metadata


class Sampler:
    """Text generation from a charlstm .onnx.

    >>> sampler = Sampler("runs/tiny/best.onnx")
    >>> sampler.generate("El libro empieza años", 1000, top_k=5, seed=0)
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, spin: bool = True):
        self.session, self.vocab, self.config, self.metadata = load_model(path, device, threads, spin)
        self.index = {ch: i for i, ch in enumerate(self.vocab)}
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.layers, self.hidden = int(shapes["h"][0]), int(shapes["h"][2])
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"

    @property
    def device(self) -> str:
        return "cuda" if self.on_cuda else "cpu"

    # ------------------------------------------------------------ text <-> ids

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Text -> ids. Characters outside the vocabulary: `error` names them, `skip` drops them."""
        if unknown not in ("error", "skip"):
            raise SamplerError(f"unknown must be error or skip, got {unknown!r}")
        missing = sorted({ch for ch in text if ch not in self.index})
        if missing and unknown == "error":
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise SamplerError(
                f"the prime has characters the model does not know: {shown}{more} (use --unknown skip to drop them)"
            )
        return np.array([self.index[ch] for ch in text if ch in self.index], dtype=np.int64)

    # ------------------------------------------------------------ the step loop

    def runner(self, batch: int):
        """A closure advancing `batch` sequences by one character from the zero state:
        run(tokens (batch,)) -> logits (batch, V), a view reused by the next call."""
        session, shape = self.session, (self.layers, batch, self.hidden)
        token = np.zeros(batch, dtype=np.int64)
        logits = np.zeros((batch, len(self.vocab)), dtype=np.float32)
        if self.on_cuda:  # the state stays on the GPU; only tokens go up and logits come down
            states = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0) for _ in range(4)]
            for value in states:
                value.update_inplace(np.zeros(shape, dtype=np.float32))
        else:
            states = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32)) for _ in range(4)]
        token_value = ort.OrtValue.ortvalue_from_numpy(token)
        logits_value = ort.OrtValue.ortvalue_from_numpy(logits)
        bindings = []
        for h_in, c_in, h_out, c_out in ((0, 1, 2, 3), (2, 3, 0, 1)):
            binding = session.io_binding()
            binding.bind_ortvalue_input("token", token_value)
            binding.bind_ortvalue_input("h", states[h_in])
            binding.bind_ortvalue_input("c", states[c_in])
            binding.bind_ortvalue_output("logits", logits_value)
            binding.bind_ortvalue_output("h_out", states[h_out])
            binding.bind_ortvalue_output("c_out", states[c_out])
            bindings.append(binding)
        parity = [0]

        def run(tokens: np.ndarray) -> np.ndarray:
            token[:] = tokens
            session.run_with_iobinding(bindings[parity[0]])
            parity[0] ^= 1
            return logits

        return run

    def stream(
        self,
        prime: str,
        length: int,
        top_k: int | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        seed: int | None = None,
        num_samples: int = 1,
        unknown: str = "error",
    ) -> Iterator[str | list[str]]:
        """Yield the generated characters one step at a time: a str, or a list of num_samples strs.
        The options and the prime are checked here, before the first character."""
        self._check_options(length, top_k, temperature, top_p, num_samples)
        prime_ids = self.encode(prime, unknown)
        if len(prime_ids) == 0:  # no prime: start from the zero state after a newline (or the first char)
            prime_ids = np.array([self.index.get("\n", 0)], dtype=np.int64)
        return self._steps(prime_ids, length, top_k, temperature, top_p, seed, num_samples)

    def _steps(self, prime_ids, length, top_k, temperature, top_p, seed, num_samples) -> Iterator[str | list[str]]:
        run = self.runner(num_samples)
        rng = np.random.default_rng(seed)
        for token in prime_ids:
            logits = run(np.full(num_samples, token, dtype=np.int64))
        for _ in range(length):
            ids = self._pick(logits, top_k, temperature, top_p, rng)
            yield self.vocab[ids[0]] if num_samples == 1 else [self.vocab[i] for i in ids]
            logits = run(ids)

    def generate(
        self,
        prime: str,
        length: int,
        top_k: int | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        seed: int | None = None,
        num_samples: int = 1,
        unknown: str = "error",
    ) -> str | list[str]:
        """The generated text without the prime (a list of num_samples texts when num_samples > 1).
        top_k=1 or temperature=0 is greedy; the same seed gives the same text."""
        pieces = list(self.stream(prime, length, top_k, temperature, top_p, seed, num_samples, unknown))
        if num_samples == 1:
            return "".join(pieces)
        return ["".join(chars) for chars in zip(*pieces)] if pieces else [""] * num_samples

    def _check_options(self, length, top_k, temperature, top_p, num_samples) -> None:
        if not isinstance(length, int) or length < 0:
            raise SamplerError(f"length must be an integer >= 0, got {length!r}")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= len(self.vocab)):
            raise SamplerError(f"top_k must be between 1 and the vocabulary size {len(self.vocab)}, got {top_k!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise SamplerError(f"temperature must be >= 0, got {temperature!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise SamplerError(f"top_p must be in (0, 1], got {top_p!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise SamplerError(f"num_samples must be an integer >= 1, got {num_samples!r}")

    @staticmethod
    def _pick(logits: np.ndarray, top_k, temperature, top_p, rng: np.random.Generator) -> np.ndarray:
        """One token per row of logits (N, V): greedy, or a draw from the temperature-scaled softmax
        restricted to the top_k most likely and then to the smallest set holding top_p of the mass."""
        if top_k == 1 or temperature == 0:
            return logits.argmax(axis=1)
        rows = np.arange(len(logits))[:, None]
        if top_k is not None and top_k < logits.shape[1]:
            candidates = np.argpartition(logits, -top_k, axis=1)[:, -top_k:]  # (N, k), unordered
        else:
            candidates = np.broadcast_to(np.arange(logits.shape[1]), logits.shape)
        scores = logits[rows, candidates].astype(np.float64) / temperature
        probs = np.exp(scores - scores.max(axis=1, keepdims=True))
        if top_p is not None and top_p < 1:
            order = np.argsort(-probs, axis=1)
            candidates, probs = candidates[rows, order], probs[rows, order]
            cumulative = np.cumsum(probs, axis=1)
            keep = cumulative - probs < top_p * cumulative[:, -1:]  # the prefix reaching top_p; >= 1 kept
            probs = np.where(keep, probs, 0.0)
        cumulative = np.cumsum(probs, axis=1)
        draws = rng.random(len(logits))[:, None] * cumulative[:, -1:]
        chosen = np.minimum((cumulative <= draws).sum(axis=1), probs.shape[1] - 1)
        return candidates[np.arange(len(logits)), chosen]
