"""A charlstm .onnx on onnxruntime: the file loaded and checked (load_model), the step's buffers bound once
(bind_step), and the loops that step with no per-character allocation: a batch of sequences (StepLoop) and the
beams of a search (BeamSteps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.errors import SamplerError
from serve.format import FORMAT


def bind_step(session: ort.InferenceSession, token, h, c, logits, h_out, c_out) -> ort.IOBinding:
    """One io_binding of the step's six tensors, made once and run many times (session.run_with_iobinding).
    Each is an OrtValue or a numpy array, which is wrapped in place: onnxruntime reads and writes its memory,
    so a step copies nothing. Shared by StepLoop, BeamSteps and inspection's reader."""
    binding = session.io_binding()
    for name, value in (("token", token), ("h", h), ("c", c)):
        binding.bind_ortvalue_input(name, _ort_value(value))
    for name, value in (("logits", logits), ("h_out", h_out), ("c_out", c_out)):
        binding.bind_ortvalue_output(name, _ort_value(value))
    return binding


def _ort_value(value) -> ort.OrtValue:
    return value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)


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
        token, logits = _ort_value(self.token), _ort_value(self.logits)
        self.bindings = [
            bind_step(session, token, states[h_in], states[c_in], logits, states[h_out], states[c_out])
            for h_in, c_in, h_out, c_out in ((0, 1, 2, 3), (2, 3, 0, 1))
        ]
        self.steps = 0

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        self.token[:] = tokens
        self.session.run_with_iobinding(self.bindings[self.steps % 2])
        self.steps += 1
        return self.logits


class BeamSteps:
    """Beam search's step: call(tokens (B,), parents (B,)) -> logits (B, V). Row i continues the state of row
    parents[i] of the last call (of the prime, at first) and reads tokens[i]. Buffers are bound once per batch
    size, so a step allocates nothing; the returned logits are overwritten by the next call."""

    def __init__(self, session: ort.InferenceSession, h: np.ndarray, c: np.ndarray):
        self.session = session
        self.h, self.c = h, c  # (L, B, H): the last call's states (the prime's, at first)
        self.bound: dict[int, tuple] = {}

    def _buffers(self, batch: int) -> tuple:
        found = self.bound.get(batch)
        if found is None:
            layers, _, hidden = self.h.shape
            vocab = self.session.get_outputs()[0].shape[1]
            token = np.zeros(batch, dtype=np.int64)
            h_in, c_in, h_out, c_out = (np.zeros((layers, batch, hidden), dtype=np.float32) for _ in range(4))
            logits = np.zeros((batch, vocab), dtype=np.float32)
            binding = bind_step(self.session, token, h_in, c_in, logits, h_out, c_out)
            found = self.bound[batch] = (binding, token, h_in, c_in, h_out, c_out, logits)
        return found

    def __call__(self, tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
        binding, token, h_in, c_in, h_out, c_out, logits = self._buffers(len(tokens))
        np.take(self.h, parents, axis=1, out=h_in)
        np.take(self.c, parents, axis=1, out=c_in)
        token[:] = tokens
        self.session.run_with_iobinding(binding)
        self.h, self.c = h_out, c_out
        return logits


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
