"""Sampler: generate text from an exported charlstm .onnx on onnxruntime, GPU or CPU. No torch.

The .onnx holds one step of the LSTM (token, h, c -> logits, h_out, c_out) and its vocabulary in the
metadata, so the file alone is enough. N samples advance together, one session run per character
(StepLoop), and the per-character loop allocates nothing.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.format import FORMAT


class SamplerError(ValueError):
    """Bad input (model file, option, prime); the CLIs print it as one line."""


@dataclass(frozen=True)
class SamplingOptions:
    """How characters are picked; checked by Sampler.stream before the first one."""

    top_k: int | None = None  # sample among the k most likely (1 = greedy); None = all
    temperature: float = 1.0  # logits are divided by it; 0 = greedy
    top_p: float | None = None  # then keep the smallest set holding this much of the mass (nucleus); None = all
    seed: int | None = None  # the same seed gives the same text; None = a fresh one
    num_samples: int = 1  # sequences advanced together, one onnxruntime call per character
    unknown: str = "error"  # prime characters the model lacks: `error` names them, `skip` drops them


class StepLoop:
    """Advances `batch` sequences by one character per call, from the zero state: run(tokens (batch,)) ->
    logits (batch, V), a buffer that the next call overwrites. Inputs and outputs are bound once
    (IOBinding) to preallocated buffers, and two bindings alternate, so h_out of one step is h of the next
    without a copy; on a GPU the state never leaves it."""

    def __init__(self, session: ort.InferenceSession, layers: int, hidden: int, vocab: int, batch: int, cuda: bool):
        shape = (layers, batch, hidden)
        self.session = session
        self.token = np.zeros(batch, dtype=np.int64)
        self.logits = np.zeros((batch, vocab), dtype=np.float32)
        if cuda:
            states = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0) for _ in range(4)]
            for value in states:
                value.update_inplace(np.zeros(shape, dtype=np.float32))
        else:
            states = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32)) for _ in range(4)]
        token_value = ort.OrtValue.ortvalue_from_numpy(self.token)
        logits_value = ort.OrtValue.ortvalue_from_numpy(self.logits)
        self.bindings = []
        for h_in, c_in, h_out, c_out in ((0, 1, 2, 3), (2, 3, 0, 1)):
            binding = session.io_binding()
            binding.bind_ortvalue_input("token", token_value)
            binding.bind_ortvalue_input("h", states[h_in])
            binding.bind_ortvalue_input("c", states[c_in])
            binding.bind_ortvalue_output("logits", logits_value)
            binding.bind_ortvalue_output("h_out", states[h_out])
            binding.bind_ortvalue_output("c_out", states[c_out])
            self.bindings.append(binding)
        self.steps = 0

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        self.token[:] = tokens
        self.session.run_with_iobinding(self.bindings[self.steps % 2])
        self.steps += 1
        return self.logits


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
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise SamplerError(f"threads must be an integer >= 1 (leave it out for onnxruntime's default), got {threads}")
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
        # The Unicode form the corpus was put into; a model exported before the form was recorded: none.
        self.normalize = self.metadata.get("normalize") or "none"
        if self.normalize not in ("NFC", "NFKC", "none"):
            raise SamplerError(f"{path}: unknown Unicode form {self.normalize!r} in its metadata")
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.layers, self.hidden = int(shapes["h"][0]), int(shapes["h"][2])
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        # fp32 or int8 (export --int8); a file exported before the key existed: read from its operators
        self.weights = self.metadata.get("weights")
        if self.weights is None:
            self.weights = "int8" if b"MatMulInteger" in Path(path).read_bytes() else "fp32"

    @property
    def device(self) -> str:
        return "cuda" if self.on_cuda else "cpu"

    # ------------------------------------------------------------ text <-> ids

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Text -> ids, the text first put into the model's Unicode form. Characters outside the vocabulary:
        `error` names them, `skip` drops them."""
        if unknown not in ("error", "skip"):
            raise SamplerError(f"unknown must be error or skip, got {unknown!r}")
        if self.normalize != "none":
            text = unicodedata.normalize(self.normalize, text)
        missing = sorted({ch for ch in text if ch not in self.index})
        if missing and unknown == "error":
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise SamplerError(
                f"the prime has characters the model does not know: {shown}{more} (use --unknown skip to drop them)"
            )
        return np.array([self.index[ch] for ch in text if ch in self.index], dtype=np.int64)

    # ------------------------------------------------------------ the step loop

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One character for each of a batch: tokens (B,) int64, h and c (L, B, H) float32 -> logits (B, V),
        h, c, all new arrays. The batch may change between calls (the HTTP service's continuous batching); in
        fp32 on the CPU a row's results do not depend on the rows beside it (tests/test_http_batch.py)."""
        logits, h, c = self.session.run(None, {"token": tokens, "h": h, "c": c})
        return logits, h, c

    def runner(self, batch: int) -> StepLoop:
        """A StepLoop advancing `batch` sequences by one character at a time from the zero state."""
        return StepLoop(self.session, self.layers, self.hidden, len(self.vocab), batch, self.on_cuda)

    def stream(
        self, prime: str, length: int, options: SamplingOptions | None = None, **values
    ) -> Iterator[str | list[str]]:
        """Yield the generated characters one step at a time: a str, or a list of num_samples strs. Options come
        as a SamplingOptions or as its fields by name (top_k=5, seed=0, ...). They and the prime are checked
        here, before the first character."""
        options = self._options(options, values)
        self._check(length, options)
        prime_ids = self.encode(prime, options.unknown)
        if len(prime_ids) == 0:  # no prime: start from the zero state after a newline (or the first char)
            prime_ids = np.array([self.index.get("\n", 0)], dtype=np.int64)
        return self._steps(prime_ids, length, options)

    def _steps(self, prime_ids: np.ndarray, length: int, options: SamplingOptions) -> Iterator[str | list[str]]:
        n = options.num_samples
        run = self.runner(n)
        seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little") >> 11
        for token in prime_ids:
            logits = run(np.full(n, token, dtype=np.int64))
        for position in range(length):
            draws = np.array([uniform(seed, sample, position) for sample in range(n)])
            ids = self.pick(logits, options.top_k, options.temperature, options.top_p, draws)
            yield self.vocab[ids[0]] if n == 1 else [self.vocab[i] for i in ids]
            logits = run(ids)

    def generate(self, prime: str, length: int, options: SamplingOptions | None = None, **values) -> str | list[str]:
        """The generated text without the prime (a list of num_samples texts when num_samples > 1).
        top_k=1 or temperature=0 is greedy; the same seed gives the same text."""
        options = self._options(options, values)
        pieces = list(self.stream(prime, length, options))
        if options.num_samples == 1:
            return "".join(pieces)
        return ["".join(chars) for chars in zip(*pieces)] if pieces else [""] * options.num_samples

    @staticmethod
    def _options(options: SamplingOptions | None, values: dict) -> SamplingOptions:
        if options is not None and values:
            raise TypeError("give a SamplingOptions or its fields by name, not both")
        return options if options is not None else SamplingOptions(**values)

    def _check(self, length: int, options: SamplingOptions) -> None:
        top_k, temperature, top_p = options.top_k, options.temperature, options.top_p
        if not isinstance(length, int) or length < 0:
            raise SamplerError(f"length must be an integer >= 0, got {length!r}")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= len(self.vocab)):
            raise SamplerError(f"top_k must be between 1 and the vocabulary size {len(self.vocab)}, got {top_k!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise SamplerError(f"temperature must be >= 0, got {temperature!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise SamplerError(f"top_p must be in (0, 1], got {top_p!r}")
        if not isinstance(options.num_samples, int) or options.num_samples < 1:
            raise SamplerError(f"num_samples must be an integer >= 1, got {options.num_samples!r}")

    @staticmethod
    def pick(logits: np.ndarray, top_k, temperature, top_p, draws: np.ndarray) -> np.ndarray:
        """One token per row of logits (N, V), given one uniform draw in [0, 1) per row: greedy (argmax, the
        lowest id among ties), or the inverse CDF of the temperature-scaled softmax over the candidates sorted
        by (logit desc, id asc), restricted to the top_k and then to the shortest prefix holding top_p of the
        mass, in float64. serve/js/core.js does the same, step for step."""
        if top_k == 1 or temperature == 0:
            return logits.argmax(axis=1)
        order = np.argsort(-logits, axis=1, kind="stable")  # (N, V): logit desc, id asc among ties
        if top_k is not None:
            order = order[:, :top_k]
        rows = np.arange(len(logits))[:, None]
        chosen = logits[rows, order].astype(np.float64)
        weights = np.exp((chosen - chosen[:, :1]) / temperature)  # (N, k) unnormalized, the first is 1
        cumulative = np.cumsum(weights, axis=1)  # left to right, as the JavaScript loop adds them
        count = np.full(len(logits), cumulative.shape[1])  # candidates kept per row
        if top_p is not None and top_p < 1:
            before = np.concatenate([np.zeros((len(logits), 1)), cumulative[:, :-1]], axis=1)  # mass before each
            count = (before < top_p * cumulative[:, -1:]).sum(axis=1)  # the shortest prefix reaching top_p
        total = cumulative[np.arange(len(logits)), count - 1]
        # the first candidate whose cumulative weight exceeds draw * total (those past the prefix are all above)
        index = np.minimum((cumulative <= (draws * total)[:, None]).sum(axis=1), count - 1)
        return order[np.arange(len(logits)), index]


# ---------------------------------------------------------------- the generator every sampler shares

MASK64 = (1 << 64) - 1


def uniform(seed: int, sample: int, position: int) -> float:
    """The draw of `sample` at `position` for `seed`: SplitMix64's finalizer of a key made of the three, as a
    float64 in [0, 1) (53 bits). Counter-based, so any runtime computes the same number from the same three
    integers (serve/js/core.js does)."""
    z = ((seed & MASK64) ^ (sample * 0x9E3779B97F4A7C15) ^ (position * 0xBF58476D1CE4E5B9)) & MASK64
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53
