"""Long prompts read beside the batch. In the batch a prompt advances one character per tick, and a tick of many
streams is slow, so a long prompt would wait behind them; here a thread of its own steps every prompt being
read, on a one-thread onnxruntime session (the other core stays the batch's), until one character is left,
then hands the request back with that state: the tick reads the last character and picks. The choices of a
request share their prompt, so one row reads it for all. In fp32 on the CPU a row's state does not depend on
the rows beside it, so a prompt read here leaves the bits that reading it in the batch leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from serve.http.batch import Batch
from serve.http.completion import Choice, Completion, top_logprobs
from serve.http.metrics import Metrics
from serve.http.prefix_cache import PrefixCache, keep_prefix
from serve.sampler import Sampler

READ_BESIDE = 64  # a prompt with more characters than this left to read is read here


@dataclass
class Read:
    """A request handed back: its prompt read up to `fed` (all but the last character, unless it ended
    early: cancelled, or the drain's deadline), and the state there, (L, H) each."""

    completion: Completion
    fed: int
    h: np.ndarray
    c: np.ndarray


class PromptReader:
    def __init__(
        self,
        sampler: Sampler,
        session: ort.InferenceSession,
        prefix_cache: PrefixCache | None,
        metrics: Metrics,
        hand_back: Callable[[list[Read]], None],
    ):
        self.vocab = sampler.vocab
        self.batch = Batch(sampler, session, session)
        self.prefix_cache, self.metrics, self.hand_back = prefix_cache, metrics, hand_back
        self.rows: list[Choice] = []  # the first choice of each request being read, in the batch's order
        self.lock = threading.Condition()
        self.arriving: list[tuple[Completion, tuple | None]] = []
        self.deadline: float | None = None  # the drain's: then every prompt goes back as it is
        self.thread = threading.Thread(target=self._run, name="charlstm-prompts", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def read(self, completion: Completion, start: tuple[int, np.ndarray, np.ndarray] | None) -> None:
        """Read a request's prompt from `start` (a kept prefix: its length, h, c) or from the beginning."""
        with self.lock:
            self.arriving.append((completion, start))
            self.lock.notify()

    def begin_drain(self, deadline: float) -> None:
        with self.lock:
            self.deadline = deadline
            self.lock.notify()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not (self.rows or self.arriving):
                    self.lock.wait()
                arriving, self.arriving = self.arriving, []
            self._join(arriving)
            self._step()
            self._hand_back()

    def _join(self, arriving: list[tuple[Completion, tuple | None]]) -> None:
        if not arriving:
            return
        first = len(self.rows)
        self.batch.join(len(arriving))
        for i, (completion, start) in enumerate(arriving, start=first):
            row = completion.choices[0]
            self.rows.append(row)
            if start is not None:
                row.fed, self.batch.h[:, i], self.batch.c[:, i] = start

    def _step(self) -> None:
        rows = self.rows
        tokens = np.fromiter((row.prompt_ids[row.fed] for row in rows), dtype=np.int64, count=len(rows))  # (B,)
        logits = self.batch.step(tokens)  # (B, V)
        for i, row in enumerate(rows):
            row.fed += 1
            if row.prefix_keys and keep_prefix(self.prefix_cache, row, self.batch.h[:, i], self.batch.c[:, i]):
                self.metrics.prefix_cache(self.prefix_cache)
            request = row.completion.request
            if request.echo and request.logprobs is not None:  # these logits predict the next prompt character
                entry = top_logprobs(logits[i], request.logprobs, int(row.prompt_ids[row.fed]), self.vocab)
                for choice in row.completion.choices:
                    choice.prompt_logprobs.append(entry)

    def _hand_back(self) -> None:
        """Requests with one prompt character left go back to the scheduler; so do cancelled ones (it frees
        their rows), and every one once the drain's deadline has passed (it ends them)."""
        ending = self.deadline is not None and time.monotonic() >= self.deadline
        done = [
            i
            for i, row in enumerate(self.rows)
            if ending or row.completion.cancelled or row.fed == len(row.prompt_ids) - 1
        ]
        if not done:
            return
        h, c = self.batch.h, self.batch.c
        reads = [Read(self.rows[i].completion, self.rows[i].fed, h[:, i].copy(), c[:, i].copy()) for i in done]
        left = set(done)
        kept = [i for i in range(len(self.rows)) if i not in left]
        self.batch.keep(kept)
        self.rows = [self.rows[i] for i in kept]
        self.hand_back(reads)
