"""Long prompts are read beside the batch: the reader leaves each request the bits a batch-1 read of all but its
prompt's last character leaves (from the zero state or from a kept prefix, with the prompt's logprobs under
echo), and in the scheduler a row never waits in the batch with more than READ_BESIDE prompt characters
left, while its text stays the offline Sampler's."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from helpers import ENGLISH, Quiet

from serve.http.completion import Completion, top_logprobs
from serve.http.metrics import Metrics
from serve.http.prompt_reader import READ_BESIDE, PromptReader
from serve.http.protocol import parse_completion
from serve.http.scheduler import Scheduler
from serve.sampler import Sampler


def completion(sampler: Sampler, prompt: str, seed: int, **body) -> Completion:
    raw = json.dumps({"prompt": prompt, "seed": seed, "max_tokens": 50, **body}).encode()
    request = parse_completion(raw, len(sampler.vocab), 100_000, 64)
    ids = sampler.start_ids(sampler.encode(prompt, "skip"))
    return Completion(request, ids, prompt, seed, Quiet())


def wait(condition, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_the_reader_leaves_the_state_a_batch_1_read_leaves(trained_onnx):
    sampler = Sampler(trained_onnx, device="cpu")
    book = ENGLISH.read_text(encoding="utf-8")
    prompts = [book[:700], book[1000:1300], book[2000:2900]]
    reads = []
    reader = PromptReader(sampler, sampler.session, None, Metrics(64), reads.extend)
    reader.start()
    # the second starts from a state kept after its first 256 characters, as a prefix hit gives it
    _, kept_h, kept_c = sampler.after(sampler.encode(prompts[1][:256], "skip"))
    echoed = completion(sampler, prompts[2], 3, echo=True, logprobs=2, n=2)
    asked = [completion(sampler, prompts[0], 1), completion(sampler, prompts[1], 2), echoed]
    reader.read(asked[0], None)
    time.sleep(0.01)  # the others join while the first is being read
    reader.read(asked[1], (256, kept_h[:, 0], kept_c[:, 0]))
    reader.read(asked[2], None)
    wait(lambda: len(reads) == 3, "the reader")
    for read in reads:
        ids = read.completion.choices[0].prompt_ids
        assert read.fed == len(ids) - 1
        _, h, c = sampler.after(ids[:-1])
        assert np.array_equal(read.h, h[:, 0]) and np.array_equal(read.c, c[:, 0])
    ids = echoed.choices[0].prompt_ids
    run = sampler.runner(1)
    expected = [top_logprobs(run(ids[i : i + 1])[0], 2, int(ids[i + 1]), sampler.vocab) for i in range(len(ids) - 1)]
    assert echoed.choices[0].prompt_logprobs == expected == echoed.choices[1].prompt_logprobs


def test_a_long_prompt_never_waits_in_the_batch_and_gives_the_samplers_text(trained_onnx):
    sampler = Sampler(trained_onnx, device="cpu")
    scheduler = Scheduler(sampler, 64, 16, Metrics(64))
    left_in_batch: list[int] = []
    tick = scheduler._tick

    def watched_tick() -> None:
        left_in_batch.append(max(len(row.prompt_ids) - row.fed for row in scheduler.rows))
        tick()

    scheduler._tick = watched_tick
    scheduler.start()
    book = ENGLISH.read_text(encoding="utf-8")
    streams = [completion(sampler, f"The {i}", 10 + i, max_tokens=3000) for i in range(4)]
    for asked in streams:
        scheduler.submit(asked)
    wait(lambda: all(len(row.chars) > 10 for asked in streams for row in asked.choices), "the streams")
    long = completion(sampler, book[:1500], 7, n=2, top_k=5)
    scheduler.submit(long)
    wait(lambda: long.done, "the long prompt's text")
    for asked in streams:
        scheduler.cancel(asked)
    threading.Thread(target=scheduler.begin_drain, args=(5.0,)).start()
    assert scheduler.drained.wait(60)
    assert [row.text() for row in long.choices] == sampler.generate(book[:1500], 50, top_k=5, seed=7, num_samples=2)
    assert max(left_in_batch) <= READ_BESIDE and len(left_in_batch) > 10
