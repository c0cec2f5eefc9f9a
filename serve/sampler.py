"""Sampler: generate text from an exported charlstm .onnx on onnxruntime, GPU or CPU. No torch.

The .onnx holds one step of the LSTM (token, h, c -> logits, h_out, c_out) and its vocabulary in the
metadata, so the file alone is enough. N samples advance together, one session run per character
(StepLoop); a constraint masks each step (serve/constrain), and beam search keeps the best continuations
(serve/beam.py).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.beam import beam_search
from serve.constrain import Automaton, compile_constraint
from serve.errors import SamplerError
from serve.generation import Generation, SamplingOptions, bias_vector, check_options
from serve.pick import draws, pick, uniform
from serve.pretrained import pretrained_path
from serve.session import BeamSteps, StepLoop, load_model

__all__ = ["Generation", "Sampler", "SamplerError", "SamplingOptions", "StepLoop", "load_model", "pick", "uniform"]


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

    @classmethod
    def pretrained(cls, name: str = "shakespeare", **kwargs) -> Sampler:
        """The model that comes with charlstm (NAME.onnx in serve/models/, and its card), on the same options.

        >>> Sampler.pretrained().generate("ROMEO:", 200, top_k=5, seed=0)
        """
        return cls(pretrained_path(name), **kwargs)

    @property
    def device(self) -> str:
        return "cuda" if self.on_cuda else "cpu"

    # ------------------------------------------------------------ text <-> ids

    def encode(self, text: str, unknown: str = "error", what: str = "the prime") -> np.ndarray:
        """Text -> ids, the text first put into the model's Unicode form. Characters outside the vocabulary:
        `error` names them (and `what` the text is: the prime, the prompt, a file), `skip` drops them."""
        if unknown not in ("error", "skip"):
            raise SamplerError(f"unknown must be error or skip, got {unknown!r}")
        if self.normalize != "none":
            text = unicodedata.normalize(self.normalize, text)
        missing = sorted({ch for ch in text if ch not in self.index})
        if missing and unknown == "error":
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise SamplerError(
                f"{what} has characters the model does not know: {shown}{more} (use --unknown skip to drop them)"
            )
        return np.array([self.index[ch] for ch in text if ch in self.index], dtype=np.int64)

    def start_ids(self, ids: np.ndarray) -> np.ndarray:
        """What a generation reads before its first character: the prime's ids, or for an empty prime a newline
        (the vocabulary's first character when it has none), as a text starts after a line in training. The
        service starts its prompts the same way; serve/js/core.js's complete() does too."""
        return ids if len(ids) else np.array([self.index.get("\n", 0)], dtype=np.int64)

    # ------------------------------------------------------------ the step loop

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One character for each of a batch: tokens (B,) int64, h and c (L, B, H) float32 -> logits (B, V),
        h, c, all new arrays. The batch may change between calls (the HTTP service's continuous batching); in
        fp32 on the CPU a row's results do not depend on the rows beside it (tests/test_http_batch.py)."""
        logits, h, c = self.session.run(None, {"token": tokens, "h": h, "c": c})
        return logits, h, c

    def after(self, prime_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (1, V), h, c (L, 1, H)) after one sequence has read `prime_ids` from the zero state."""
        h = np.zeros((self.layers, 1, self.hidden), dtype=np.float32)  # (L, 1, H)
        c = np.zeros_like(h)
        for token in prime_ids:
            logits, h, c = self.step(np.array([token], dtype=np.int64), h, c)
        return logits, h, c

    def runner(self, batch: int) -> StepLoop:
        """A StepLoop advancing `batch` sequences by one character at a time from the zero state."""
        return StepLoop(self.session, self.layers, self.hidden, len(self.vocab), batch, self.on_cuda)

    pick = staticmethod(pick)

    # ------------------------------------------------------------ generation

    def stream(
        self,
        prime: str,
        length: int,
        options: SamplingOptions | None = None,
        finishes: list[str] | None = None,
        **values,
    ) -> Iterator[str | list[str]]:
        """Yield the generated characters one step at a time: a str, or a list of num_samples strs ("" for a
        sample that has ended). Options come as a SamplingOptions or as its fields by name (top_k=5, seed=0,
        ...). They, the constraint and the prime are checked here, before the first character. Under beam
        search the best beam comes whole, once the search ends. `finishes`, when given, receives why each
        sample ended ("stop" or "length") as the stream ends."""
        plan = self.plan(prime, length, self._options(options, values))
        finishes = [] if finishes is None else finishes
        if plan.options.beam_width is None:
            return self._steps(plan, finishes)
        found = self._search(plan)
        finishes[:] = [g.finish for g in found]
        texts = [g.text for g in found]
        return iter([texts] if plan.options.num_samples > 1 else texts)

    def generate(self, prime: str, length: int, options: SamplingOptions | None = None, **values) -> str | list[str]:
        """The generated text without the prime (a list of num_samples texts when num_samples > 1; under beam
        search the num_samples best beams, fewer when fewer texts exist). top_k=1 or temperature=0 is greedy;
        the same seed gives the same text."""
        options = self._options(options, values)
        texts = [g.text for g in self.complete(prime, length, options)]
        return texts[0] if options.num_samples == 1 else texts

    def complete(self, prime: str, length: int, options: SamplingOptions | None = None, **values) -> list[Generation]:
        """generate's texts as Generations: each with why it ended (`stop` or `length`) and, under beam search,
        its score."""
        plan = self.plan(prime, length, self._options(options, values))
        if plan.options.beam_width is not None:
            return self._search(plan)
        finishes: list[str] = []
        pieces = list(self._steps(plan, finishes))
        n = plan.options.num_samples
        texts = ["".join(chars) for chars in zip(*pieces)] if n > 1 and pieces else ["".join(pieces)] * (n == 1)
        return [Generation(text, finish) for text, finish in zip(texts or [""] * n, finishes)]

    def plan(self, prime: str, length: int, options: SamplingOptions) -> Plan:
        """The request checked and made ready: SamplerError (one line) for anything wrong, before any step."""
        check_options(length, options, len(self.vocab))
        prime_ids = self.start_ids(self.encode(prime, options.unknown))
        bias = bias_vector(options.logit_bias, len(self.vocab))
        return Plan(prime_ids, length, options, self.constraint(options), bias)

    def constraint(self, options: SamplingOptions) -> Automaton | None:
        """The options' regex or choices compiled over the vocabulary (None without one); SamplerError if bad."""
        if options.regex is None and options.choices is None:
            return None
        end = "\n" if options.end is None else options.end
        return compile_constraint(self.vocab, options.regex, options.choices, end, self.normalize)

    def _steps(self, plan: Plan, finishes: list[str]) -> Iterator[str | list[str]]:
        """Sampling: every sample draws its character at each position until it ends; `finishes` gets why."""
        options, automaton = plan.options, plan.automaton
        n = options.num_samples
        run = self.runner(n)
        seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little") >> 11
        for token in plan.prime_ids:
            logits = run(np.full(n, token, dtype=np.int64))
        finishes[:] = ["length"] * n
        states = np.full(n, automaton.start if automaton is not None else 0)  # (n,) where each constraint stands
        live = np.ones(n, dtype=bool)  # (n,)
        for position in range(plan.length):
            scores = logits + plan.bias if plan.bias is not None else logits
            allowed = self._masks(automaton, states, live, finishes) if automaton is not None else None
            if not live.any():
                return
            drawn = draws([seed] * n, range(n), [position] * n)
            ids = pick(scores, options.top_k, options.temperature, options.top_p, drawn, allowed)
            if automaton is not None:
                states = self._advance(automaton, states, ids, live, finishes)
                if not live.any():
                    return
            yield self.vocab[ids[0]] if n == 1 else [self.vocab[t] if ok else "" for t, ok in zip(ids.tolist(), live)]
            logits = run(ids)

    def _masks(self, automaton: Automaton, states: np.ndarray, live: np.ndarray, finishes: list[str]) -> np.ndarray:
        """(n, V): each row's mask. A row that nothing can follow is whole and ends here; rows that have ended
        pick anything, and it is thrown away. One row is read without array work: it is the common case."""
        if len(states) == 1:
            mask = automaton.allowed(int(states[0]))
            if not mask.any():
                live[0], finishes[0] = False, "stop"
            return mask[None]
        allowed = automaton.allowed_rows(states)  # (n, V)
        self._end(live & ~allowed.any(axis=1), live, finishes)
        allowed[~live] = True
        return allowed

    def _advance(
        self, automaton: Automaton, states: np.ndarray, ids: np.ndarray, live: np.ndarray, finishes: list[str]
    ) -> np.ndarray:
        """The rows' next states; a row that drew the end ends (the end is not part of its text)."""
        if len(states) == 1:
            token = int(ids[0])
            if token == automaton.end_id:
                live[0], finishes[0] = False, "stop"
            else:
                states[0] = automaton.advance(int(states[0]), token)
            return states
        self._end(live & (ids == automaton.end_id), live, finishes)
        return np.where(live, automaton.advance_rows(states, ids), automaton.start)

    @staticmethod
    def _end(ending: np.ndarray, live: np.ndarray, finishes: list[str]) -> None:
        """The rows in `ending` end here, complete ("stop")."""
        if ending.any():
            live &= ~ending
            for i in np.flatnonzero(ending).tolist():
                finishes[i] = "stop"

    def _search(self, plan: Plan) -> list[Generation]:
        width, count = plan.options.beam_width, plan.options.num_samples
        logits, h, c = self.after(plan.prime_ids)
        steps = BeamSteps(self.session, h, c)
        found = beam_search(steps, logits, plan.length, width, count, plan.automaton, plan.bias)
        return [Generation("".join(self.vocab[t] for t in beam.ids), beam.finish, beam.score) for beam in found]

    @staticmethod
    def _options(options: SamplingOptions | None, values: dict) -> SamplingOptions:
        if options is not None and values:
            raise TypeError("give a SamplingOptions or its fields by name, not both")
        return options if options is not None else SamplingOptions(**values)


@dataclass(frozen=True)
class Plan:
    """A generation checked and ready to run."""

    prime_ids: np.ndarray  # (P,) at least one id
    length: int
    options: SamplingOptions
    automaton: Automaton | None
    bias: np.ndarray | None  # (V,) float32, added to the logits first
