"""The service's tick as array work: rows of many kinds (plain, stop sequences, logprobs, a constraint,
logit_bias, n > 1, several sets of pick options, prompts of different lengths) share ticks, join between them
and leave as they finish or are cancelled, and each gives the offline Sampler's text and ending; the draws of
many rows are `uniform`'s numbers; the event loop is called once per tick for all the handlers that wait."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from helpers import Quiet

from serve.generation import SamplingOptions, bias_array
from serve.http.completion import Completion, Notifier, wake_all
from serve.http.metrics import Metrics
from serve.http.protocol import parse_completion
from serve.http.rows import RowArrays
from serve.http.scheduler import Scheduler
from serve.http.tick import Ticker
from serve.pick import uniform
from serve.sampler import Sampler

PROMPTS = ["The ", "A", "", "Then the old man said, and went on: ", "It was a long time ago when t"]


def asked(sampler: Sampler, i: int, rng: np.random.Generator) -> tuple[Completion, dict]:
    """Request i: its kind by i % 8, its length and prompt at random; and the Sampler options that give its text."""
    kind = i % 8
    prompt = PROMPTS[int(rng.integers(0, len(PROMPTS)))]
    body: dict = {"prompt": prompt, "seed": 1000 + i, "max_tokens": int(rng.integers(3, 40)), "top_k": 5}
    options: dict = {"top_k": 5}
    automaton = bias = None
    if kind == 4:
        body["stop"] = ["e ", "th"]
    elif kind == 5:
        body["logprobs"] = 2
    elif kind == 6:
        body["guided_regex"] = options["regex"] = "[a-z ]{2,30}"
        automaton = sampler.constraint(SamplingOptions(regex="[a-z ]{2,30}"))
    elif kind == 7:
        body["logit_bias"] = {"3": 4.0, "5": -100}
        options["logit_bias"] = {3: 4.0, 5: -100}
        bias = bias_array([(3, 4.0), (5, -100.0)], len(sampler.vocab))
    if i % 5 == 1:
        body["n"] = options["num_samples"] = 2
    if i % 7 == 3:
        body.pop("top_k")
        options.pop("top_k")
        body["temperature"] = options["temperature"] = 0.8
        body["top_p"] = options["top_p"] = 0.9
    request = parse_completion(json.dumps(body).encode(), len(sampler.vocab), 1000, 64)
    ids = sampler.start_ids(sampler.encode(prompt, "skip"))
    return Completion(request, ids, prompt, body["seed"], Quiet(), automaton, bias), options


def expected(sampler: Sampler, completion: Completion, options: dict) -> list[tuple[str, str]]:
    """What the offline Sampler gives, with the request's stop sequences applied as the service applies them."""
    request = completion.request
    found = sampler.complete(completion.prompt_text, request.max_tokens, seed=completion.seed, **options)
    texts = []
    for generation in found:
        text, finish = generation.text, generation.finish
        for end in range(1, len(text) + 1):  # the first stop to complete; of those ending there, the longest
            ending = [len(stop) for stop in request.stop if text[:end].endswith(stop)]
            if ending:
                text, finish = text[: end - max(ending)], "stop"
                break
        texts.append((text, finish))
    return texts


def test_rows_of_every_kind_sharing_ticks_give_the_samplers_texts(trained_onnx):
    sampler = Sampler(trained_onnx, device="cpu")
    scheduler = Scheduler(sampler, 64, 64, Metrics(64))
    rng = np.random.default_rng(0)
    pending = [asked(sampler, i, rng) for i in range(72)]
    submitted, cancelled = [], None
    ticks = widest = 0
    while pending or scheduler.rows:
        room, joining = 64 - len(scheduler.rows), []
        wanted = int(rng.integers(1, 30)) if ticks % 3 == 0 else 0  # joins every third tick
        while pending and len(joining) < wanted and pending[0][0].request.n <= room:
            completion, options = pending.pop(0)
            room -= completion.request.n
            joining.append(completion)
            submitted.append((completion, options))
        scheduler._join(joining, [])
        if ticks == 12:  # a client goes away mid-text
            cancelled = scheduler.rows[5].completion
            cancelled.cancelled = True
            scheduler._leave(cancelled_only=True)
        if scheduler.rows:
            widest = max(widest, len(scheduler.rows))
            scheduler._tick()
            scheduler._leave(cancelled_only=False)
        ticks += 1
        assert ticks < 1000, "rows that never finish"
    assert widest >= 40 and cancelled is not None
    for completion, options in submitted:
        if completion is cancelled:
            continue
        got = [(choice.text(), choice.finish) for choice in completion.choices]
        assert got == expected(sampler, completion, options), completion.request
    kinds = {i % 8 for i, (completion, _) in enumerate(submitted) if completion is not cancelled}
    assert kinds == set(range(8))


def test_the_draws_of_a_tick_are_uniforms(trained_onnx):
    """Under VECTOR_DRAWS rows one call per row, from it on one pass of uint64 arithmetic: the same numbers."""
    rows = RowArrays()
    seeds = [0, 1, (1 << 64) - 1, 1 << 63, 123456789012345678] * 8
    rows.seeds = np.array(seeds, dtype=np.uint64)
    rows.samples = np.arange(len(seeds), dtype=np.uint64) % 3
    rows.counts = np.arange(len(seeds), dtype=np.int64) * 7919
    want = [uniform(s, int(i), int(p)) for s, i, p in zip(seeds, rows.samples, rows.counts)]
    for size in (1, 5, 15, 16, 40):
        group = np.arange(size, dtype=np.int64)
        assert Ticker._draws(rows, group).tolist() == want[:size]


def test_a_tick_calls_the_event_loop_once_for_every_waiting_handler():
    loop = asyncio.new_event_loop()
    calls = []
    original = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: calls.append(args) or original(*args)
    try:
        notifiers = [Notifier(loop) for _ in range(5)]
        for notifier in notifiers[:3]:
            notifier.waiting = True  # three handlers wait, two are busy sending
        wake_all(notifiers)
        assert len(calls) == 1
        loop.run_until_complete(asyncio.sleep(0))
        assert [n.event.is_set() for n in notifiers] == [True, True, True, False, False]
        assert all(n.pending for n in notifiers)  # the busy ones see it at their next wait
        wake_all([])
        assert len(calls) == 1
    finally:
        loop.close()
