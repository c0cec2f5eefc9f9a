"""The service's batched step, row by row: in fp32 on the CPU a row's logits and state equal a batch-1 step's
bitwise while other rows join, leave and reorder (so a seed gives the same text whatever else is generating);
int8 is not batch-invariant and says so. And the stop-sequence bookkeeping of one choice."""

from __future__ import annotations

import numpy as np
import pytest

import serve.http.batch as batch_module
from export.onnx import main as export_main
from serve.http.app import model_card
from serve.http.batch import Batch
from serve.http.completion import Completion
from serve.http.protocol import parse_completion
from serve.sampler import Sampler


def drive(sampler: Sampler, ticks: int, seed: int, batch: Batch | None = None) -> tuple[int, int]:
    """Random joins, leaves and reorders around a Batch; every row checked against its own batch-1 steps.
    Returns (rows whose logits differed, the largest batch seen)."""
    rng = np.random.default_rng(seed)
    batch = batch if batch is not None else Batch(sampler)
    shape = (sampler.layers, 1, sampler.hidden)
    alone: list[tuple[np.ndarray, np.ndarray]] = []  # each row's (h, c), stepped at batch 1
    differ, largest = 0, 0
    for _ in range(ticks):
        joining = int(rng.integers(0, 4))
        batch.join(joining)
        alone += [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in range(joining)]
        if len(alone) > 1:  # some leave, the rest in a new order
            order = rng.permutation(len(alone))[: max(1, len(alone) - int(rng.integers(0, 3)))]
            batch.keep(order)
            alone = [alone[i] for i in order]
        if not alone:
            continue
        tokens = rng.integers(0, len(sampler.vocab), len(alone)).astype(np.int64)
        logits = batch.step(tokens)
        largest = max(largest, len(alone))
        for row, (h, c) in enumerate(alone):
            one, h, c = sampler.step(tokens[row : row + 1], h, c)
            alone[row] = (h, c)
            same = np.array_equal(one[0], logits[row])
            same &= np.array_equal(h[:, 0], batch.h[:, row]) and np.array_equal(c[:, 0], batch.c[:, row])
            differ += not same
    return differ, largest


def test_fp32_rows_equal_batch_1_bitwise_as_rows_join_leave_and_reorder(trained_onnx):
    sampler = Sampler(trained_onnx, device="cpu")
    differ, largest = drive(sampler, ticks=300, seed=0)
    assert largest >= 20 and differ == 0
    assert model_card(sampler, trained_onnx)["batch_invariant"] is True


class Counting:
    """An onnxruntime session that counts the batch sizes it was run at."""

    def __init__(self, session):
        self.session, self.sizes = session, []

    def run(self, outputs, feeds):
        self.sizes.append(len(feeds["token"]))
        return self.session.run(outputs, feeds)

    def io_binding(self):
        return self.session.io_binding()

    def run_with_iobinding(self, binding):
        self.session.run_with_iobinding(binding)
        self.sizes.append(binding.get_outputs()[0].shape()[0])


def test_small_ticks_run_on_one_thread_and_give_the_same_bits(trained_onnx, monkeypatch):
    """With a one-thread session beside the sampler's, a tick under TWO_THREADS_MACS runs on the one thread and
    a larger one on the sampler's session, and every row still equals its batch-1 steps bitwise as the batch
    crosses the line both ways."""
    from serve.sampler import load_model

    sampler = Sampler(trained_onnx, device="cpu")
    row_macs = batch_module.macs_per_row(sampler.layers, sampler.hidden, len(sampler.vocab))
    assert row_macs == 4 * sampler.hidden**2 + (sampler.layers - 1) * 8 * sampler.hidden**2 + sampler.hidden * 100
    monkeypatch.setattr(batch_module, "TWO_THREADS_MACS", 6 * row_macs)  # under 6 rows: one thread
    one_thread = Counting(load_model(trained_onnx, device="cpu", threads=1, spin=False)[0])
    wide = Counting(sampler.session)
    monkeypatch.setattr(sampler, "session", wide)
    differ, largest = drive(sampler, ticks=200, seed=1, batch=Batch(sampler, one_thread))
    assert differ == 0 and largest >= 10
    assert one_thread.sizes and max(one_thread.sizes) <= 5  # the ticks under the line
    ticks_on_wide = [size for size in wide.sizes if size > 1]  # the reference's batch-1 steps run there too
    assert ticks_on_wide and min(ticks_on_wide) >= 6
    # while prompts are read beside the batch (`narrow`), every tick runs on the one thread, with the same bits
    batch = Batch(sampler, one_thread)
    batch.narrow = True
    differ, largest = drive(sampler, ticks=60, seed=2, batch=batch)
    assert differ == 0 and largest >= 10 and max(one_thread.sizes) == largest


def test_a_wide_models_ticks_run_on_spinning_threads_and_give_the_same_bits(trained_onnx):
    """With a spinning session, every tick of a model of at least spin_row_macs per row runs there (never while
    `narrow`: then on the one thread), a narrower model's never; every row still equals its batch-1 steps
    bitwise."""
    from serve.sampler import load_model

    sampler = Sampler(trained_onnx, device="cpu")
    row_macs = batch_module.macs_per_row(sampler.layers, sampler.hidden, len(sampler.vocab))
    one_thread = Counting(load_model(trained_onnx, device="cpu", threads=1, spin=False)[0])
    spinning = Counting(load_model(trained_onnx, device="cpu", spin=True)[0])
    wide = Batch(sampler, one_thread, spinning=spinning, spin_row_macs=row_macs)
    differ, largest = drive(sampler, ticks=150, seed=3, batch=wide)
    assert differ == 0 and largest >= 10 and not one_thread.sizes and max(spinning.sizes) == largest
    wide = Batch(sampler, one_thread, spinning=spinning, spin_row_macs=row_macs)
    wide.narrow = True
    spinning.sizes.clear()
    differ, _ = drive(sampler, ticks=30, seed=4, batch=wide)
    assert differ == 0 and not spinning.sizes and one_thread.sizes
    narrower = Batch(sampler, one_thread, spinning=spinning, spin_row_macs=row_macs + 1)
    differ, _ = drive(sampler, ticks=30, seed=5, batch=narrower)
    assert differ == 0 and not spinning.sizes


def test_the_prefix_cache_keeps_the_longest_prefixes_within_its_bytes():
    """Boundary keys every 256 characters that leave the last one unread, chained (prompts sharing a beginning
    share its keys); the longest kept prefix found; the least recently used out first once over the bound."""
    from serve.http.prefix_cache import CHUNK, PrefixCache, boundary_keys

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 60, 1300)
    keys = boundary_keys(ids)
    assert len(keys) == 5 and len(boundary_keys(ids[:1281])) == 5 and len(boundary_keys(ids[:1280])) == 4
    other = ids.copy()
    other[700] += 1  # differs inside the third chunk
    assert boundary_keys(other)[:2] == keys[:2] and boundary_keys(other)[2] != keys[2]
    state = [np.full((2, 8), float(k), dtype=np.float32) for k in range(6)]
    entry = PrefixCache.size(state[0], state[0])
    cache = PrefixCache(max_bytes=3 * entry)
    assert cache.longest(keys) is None and cache.misses == 1
    for k in range(4):
        cache.store(keys[k], state[k], state[k])  # the fourth pushes the first out
    assert cache.bytes == 3 * entry and keys[0] not in cache.entries
    length, h, c = cache.longest(boundary_keys(other))  # its keys 3.. differ: the longest kept is its second
    assert length == 2 * CHUNK and np.array_equal(h, state[1]) and cache.hits == 1
    cache.store(keys[4], state[4], state[4])  # keys[1] was used last: keys[2] goes
    assert set(cache.entries) == {keys[1], keys[3], keys[4]}
    assert cache.longest(keys)[0] == 5 * CHUNK
    small = PrefixCache(max_bytes=entry - 1)
    small.store(keys[0], state[0], state[0])  # larger than the bound: not kept
    assert small.bytes == 0 and not small.entries


def test_int8_is_not_batch_invariant_and_says_so(trained_run):
    assert export_main([str(trained_run / "ckpt.pt"), "--int8", "--int8-limit", "100"]) == 0
    path = trained_run / "ckpt.int8.onnx"
    sampler = Sampler(path, device="cpu")
    card = model_card(sampler, path)
    assert card["weights"] == "int8" and card["batch_invariant"] is False
    differ, _ = drive(sampler, ticks=60, seed=1)
    assert differ > 0  # dynamic quantization scales each batch as a whole: the reason for the flag


def feed(text: str, stops: list[str], max_tokens: int = 1000) -> tuple[str, str | None, list[str]]:
    """A choice fed `text` one character at a time: its final text, finish_reason, and what was visible after
    each character."""
    body = f'{{"prompt": "", "max_tokens": {max_tokens}, "stop": {stops!r}}}'.replace("'", '"')
    request = parse_completion(body.encode(), vocab_size=100, max_tokens=1000, max_n=1)
    completion = Completion(request, np.array([0]), "", seed=0, notifier=None)
    choice = completion.choices[0]
    seen = []
    for ch in text:
        choice.accept(ch)
        seen.append(choice.text())
        if choice.finish:
            break
    return choice.text(), choice.finish, seen


@pytest.mark.parametrize(
    "text, stops, final, finish",
    [
        ("hello world", ["wor"], "hello ", "stop"),
        ("hello world", ["xyz"], "hello world", None),
        ("aab", ["ab"], "a", "stop"),  # a partial match that fails, then one that holds
        ("say ok.", ["k.", "ok."], "say ", "stop"),  # two end together: the text ends before the longer
        ("abcabd", ["abd", "bc"], "a", "stop"),  # the first to be completed wins
    ],
)
def test_stop_sequences_hold_back_partial_matches(text, stops, final, finish):
    result, reason, seen = feed(text, stops)
    assert (result, reason) == (final, finish)
    for visible in seen:
        assert final.startswith(visible) or visible == text, "a character was shown that the stop later took back"


def test_max_tokens_releases_what_was_held_back():
    assert feed("hello wo", ["world"], max_tokens=8)[:2] == ("hello wo", "length")
