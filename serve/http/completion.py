"""One request in flight (Completion) and each of its n choices (Choice): what the scheduler thread writes as
it ticks, and what the request's handler, on the event loop, reads.

The scheduler thread is the only writer. It appends a character before it moves `visible` past it, and sets
`visible` before `finish`, so a reader that sees `finish` set also sees the final text; lists only grow."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterable

import numpy as np

from serve.constrain import Automaton
from serve.http.protocol import CompletionRequest
from serve.logprobs import log_softmax


class Notifier:
    """Wakes one asyncio waiter from another thread, at most once per wait (so ticks that come faster than the
    handler reads cost one wake-up, not one per tick); and ends a stream's pause between events early once the
    completion is whole (`end`), so that its last characters are sent when they exist."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self.lock = threading.Lock()
        self.waiting = False
        self.pending = False
        self.ended = False
        self.sleeper: asyncio.Future | None = None  # a pause under way

    def wake(self) -> None:  # any thread
        event = self.mark()
        if event is not None:
            self.loop.call_soon_threadsafe(event.set)

    def mark(self) -> asyncio.Event | None:  # any thread: something happened; the event to set if one waits
        with self.lock:
            self.pending = True
            if not self.waiting:
                return None
            self.waiting = False
        return self.event

    def end(self) -> None:  # any thread: nothing more will come
        with self.lock:
            self.ended = True
            sleeper, self.sleeper = self.sleeper, None
        self.wake()
        if sleeper is not None:
            self.loop.call_soon_threadsafe(_resolve, sleeper)

    async def wait(self) -> None:  # the event loop: returns once something happened since the last wait
        with self.lock:
            if self.pending:
                self.pending = False
                return
            self.waiting = True
            self.event.clear()
        await self.event.wait()
        with self.lock:
            self.pending = False

    async def pause(self, seconds: float) -> None:  # the event loop: sleep `seconds`, or until `end`
        future = self.loop.create_future()
        with self.lock:
            if self.ended:
                return
            self.sleeper = future
        timer = self.loop.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()
            with self.lock:
                self.sleeper = None


def wake_all(notifiers: Iterable[Notifier]) -> None:
    """Notifier.wake for many at once, with one call into each event loop (for the handlers that wait), not
    one per notifier: a tick wakes every streaming row's handler."""
    waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
    for notifier in notifiers:
        event = notifier.mark()
        if event is not None:
            waiting.setdefault(notifier.loop, []).append(event)
    for loop, events in waiting.items():
        loop.call_soon_threadsafe(_set_all, events)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Choice:
    """One generated sequence: the ids it reads first (the prompt), then the characters it picks."""

    def __init__(self, completion: Completion, index: int, prompt_ids: np.ndarray):
        self.completion = completion
        self.index = index  # the generator's sample index (Sampler's num_samples row)
        self.prompt_ids = prompt_ids  # at least one id: an empty prompt starts from a newline
        self.fed = 0  # prompt ids read so far
        self.prefix_keys: list[bytes] = []  # its prompt's prefixes the service may keep (serve/http/prefix_cache.py)
        self.chars: list[str] = []  # picked characters, including any stop sequence
        self.logprobs: list[tuple[float, list[tuple[str, float]]]] = []  # per char: its log-p, the top ones
        self.prompt_logprobs: list[tuple[float, list[tuple[str, float]]]] = []  # per prompt char after the first
        self.tail = ""  # the last characters, for stop matching
        automaton = completion.automaton
        self.state = automaton.start if automaton is not None else 0  # where the constraint stands
        self.score: float | None = None  # beam search: the sum of the characters' log-probabilities
        self.visible = 0  # characters the client may see (a partial stop match is held back)
        self.finish: str | None = None  # "length" or "stop" once done

    def accept(self, char: str) -> None:
        """Take a picked character: stop on a stop sequence (cut before it), else on max_tokens."""
        self.chars.append(char)
        request = self.completion.request
        if request.stop:
            self.tail = (self.tail + char)[-self.completion.longest_stop :]
            ends = [len(stop) for stop in request.stop if self.tail.endswith(stop)]
            if ends:
                self.visible = len(self.chars) - max(ends)  # the stop that began first
                self.finish = "stop"
                return
            if len(self.chars) < request.max_tokens:
                self.visible = len(self.chars) - self._partial_stop()
                return
        if len(self.chars) >= request.max_tokens:
            self.visible = len(self.chars)
            self.finish = "length"
        else:
            self.visible = len(self.chars)

    def _partial_stop(self) -> int:
        """Characters at the end that could begin a stop sequence: the stream holds them back."""
        held = 0
        for stop in self.completion.request.stop:
            for size in range(min(len(stop) - 1, len(self.tail)), held, -1):
                if self.tail.endswith(stop[:size]):
                    held = size
                    break
        return held

    def allowed(self) -> np.ndarray | None:
        """The constraint's mask for the next character (None without a constraint)."""
        automaton = self.completion.automaton
        return automaton.allowed(self.state) if automaton is not None else None

    def complete(self) -> None:
        """The constraint ended the text: the end character was drawn, or nothing could follow."""
        self.visible = len(self.chars)
        self.finish = "stop"

    def end(self) -> None:
        """Ended from outside (the drain's deadline): what it has is its text."""
        if self.finish is None:
            self.visible = len(self.chars)
            self.finish = "length"

    def text(self, start: int = 0, stop: int | None = None) -> str:
        return "".join(self.chars[start : self.visible if stop is None else stop])


class Completion:
    """A request in flight: its checked options, the seed in use, its choices and how its handler is woken."""

    def __init__(
        self,
        request: CompletionRequest,
        prompt_ids: np.ndarray,
        prompt_text: str,
        seed: int,
        notifier: Notifier,
        automaton: Automaton | None = None,
        bias: np.ndarray | None = None,
    ):
        self.request = request
        self.automaton = automaton  # the compiled guided_regex or guided_choice
        self.bias = bias  # (V,) float32 logit_bias, added to the logits first
        self.plain = automaton is None and bias is None  # its pick reads the logits as they are
        self.seed = seed
        # the prompt as the model read it (its Unicode form, unknowns skipped); prompt_ids is never empty: an
        # empty prompt starts from a newline, as Sampler starts
        self.prompt_text = prompt_text
        self.prompt_chars = len(prompt_text)
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.longest_stop = max((len(s) for s in request.stop), default=0)
        self.choices = [Choice(self, i, prompt_ids) for i in range(request.n)]
        self.notifier = notifier
        self.cancelled = False  # the client went away: the scheduler drops the rows at its next tick
        # the options of the pick, as a key: rows with equal keys are picked in one call
        self.pick_key = (request.top_k, request.temperature, request.top_p)
        self.submitted = time.monotonic()

    @property
    def done(self) -> bool:
        return all(choice.finish is not None for choice in self.choices)


def top_logprobs(row: np.ndarray, count: int, token: int, vocab: list[str]) -> tuple[float, list[tuple[str, float]]]:
    """The log-probability of `token` under the model's own softmax of `row` (no temperature), and the `count`
    most likely characters with theirs, best first (ties: the lower id first, as the pick orders them)."""
    logp = log_softmax(row[None, :])[0]  # (V,)
    best = np.argsort(-row, kind="stable")[:count]
    return float(logp[token]), [(vocab[i], float(logp[i])) for i in best]
