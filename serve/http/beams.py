"""Beam-search requests: one worker thread runs each search as the offline Sampler does (its own batch of beams,
stepped with the session that the scheduler thread also steps: onnxruntime sessions take concurrent runs), then
fills the request's choices with the best beams at once. A client that goes away, or the drain's deadline,
ends a search at its next position, with what it has."""

from __future__ import annotations

import queue
import sys
import threading
import time

from serve.beam import beam_search
from serve.http.completion import Completion
from serve.http.protocol import ApiError
from serve.sampler import Sampler
from serve.session import BeamSteps

RETRY_AFTER = 1  # seconds a client told 429 is asked to wait


class BeamWorker:
    def __init__(self, sampler: Sampler, max_queue: int):
        self.sampler = sampler
        self.max_queue = max_queue  # searches waiting, besides the one running
        self.jobs: queue.Queue[Completion | None] = queue.Queue()
        self.waiting = 0
        self.lock = threading.Lock()
        self.draining = False
        self.deadline: float | None = None
        self.thread = threading.Thread(target=self._run, name="charlstm-beams", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, completion: Completion) -> None:
        with self.lock:
            if self.draining:
                raise ApiError(503, "the server is shutting down and takes no new requests", code="draining")
            if self.waiting > self.max_queue:
                raise ApiError(
                    429, f"{self.waiting} beam searches are waiting; retry after {RETRY_AFTER} s", code="server_full"
                )
            self.waiting += 1
        self.jobs.put(completion)

    def begin_drain(self, grace: float) -> None:
        with self.lock:
            self.draining = True
            self.deadline = time.monotonic() + grace
        self.jobs.put(None)

    def wait_drained(self) -> None:
        self.thread.join()

    def _stop(self, completion: Completion) -> bool:
        return completion.cancelled or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _run(self) -> None:
        while (completion := self.jobs.get()) is not None:
            try:
                if not completion.cancelled:
                    self._search(completion)
            except Exception as e:  # the search failed: its request ends with what it has, the worker goes on
                for choice in completion.choices:
                    choice.end()
                print(f"charlstm: a beam search failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            finally:
                with self.lock:
                    self.waiting -= 1
                completion.notifier.end()
        while not self.jobs.empty():  # waiting when the drain began: answered with what they have (nothing)
            if (completion := self.jobs.get_nowait()) is not None:
                for choice in completion.choices:
                    choice.end()
                completion.notifier.end()

    def _search(self, completion: Completion) -> None:
        request, sampler = completion.request, self.sampler
        prompt = completion.choices[0].prompt_ids
        logits, h, c = sampler.after(prompt)
        found = beam_search(
            BeamSteps(sampler.session, h, c),
            logits,
            request.max_tokens,
            request.beam_width,
            request.n,
            completion.automaton,
            completion.bias,
            stop=lambda: self._stop(completion),
        )
        completion.choices = completion.choices[: len(found)]
        for choice, beam in zip(completion.choices, found):
            choice.chars = [sampler.vocab[t] for t in beam.ids]
            choice.fed = len(choice.prompt_ids)
            choice.score = beam.score
            choice.visible = len(choice.chars)
            choice.finish = beam.finish
