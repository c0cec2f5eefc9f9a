"""The HTTP service against the offline Sampler, through real clients (the `openai` package, httpx) on one real
server: plain and streamed completions, n, stop sequences, logprobs, echo, the server's seed, 64 concurrent
streams, a client that goes away, /v1/models and /metrics."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import httpx
import numpy as np
import openai
import pytest
from http_server import API_KEY, Server

from serve.sampler import Sampler


@pytest.fixture(scope="module")
def server(trained_onnx):
    server = Server(trained_onnx, "--max-tokens", "200000", "--max-batch", "64", "--stream-interval", "0.005")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def sampler(trained_onnx) -> Sampler:
    return Sampler(trained_onnx, device="cpu")


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def stream_texts(client, server, n: int, **options) -> tuple[list[str], list[str | None], list]:
    """A streamed completion through the openai package: each choice's text, finish_reason, and the chunks."""
    texts, finish, chunks = [""] * n, [None] * n, []
    for chunk in client.completions.create(model=server.model_id, n=n, stream=True, **options):
        chunks.append(chunk)
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    return texts, finish, chunks


def test_completion_equals_the_sampler(client, server, sampler):
    for prompt, options in [
        ("The ", dict(top_k=5, temperature=0.8, seed=11)),
        ("def ", dict(top_p=0.9, temperature=1.1, seed=2**53 + 7)),
        ("", dict(seed=0)),  # an empty prompt starts as Sampler starts
        ("The", dict(temperature=0, seed=1)),  # greedy
    ]:
        top_k = options.pop("top_k", None)
        response = client.completions.create(
            model=server.model_id, prompt=prompt, max_tokens=300, n=3, extra_body={"top_k": top_k}, **options
        )
        expected = sampler.generate(prompt, 300, top_k=top_k, num_samples=3, **options)
        assert [c.text for c in sorted(response.choices, key=lambda c: c.index)] == expected
        assert {c.finish_reason for c in response.choices} == {"length"}
        assert response.usage.completion_tokens == 900 and response.usage.prompt_tokens == len(prompt)
        assert response.model_extra["seed"] == options["seed"]


def test_stream_equals_the_sampler_in_several_events(client, server, sampler):
    texts, finish, chunks = stream_texts(
        client, server, 2, prompt="The ", max_tokens=2000, seed=5, extra_body={"top_k": 10}
    )
    assert texts == sampler.generate("The ", 2000, top_k=10, seed=5, num_samples=2)
    assert finish == ["length", "length"]
    # several characters per event: the event rate is bounded, not one event per character
    assert 2 < len(chunks) < 4000


def test_stream_usage_and_echo(client, server, sampler):
    texts, _, chunks = stream_texts(
        client, server, 1, prompt="The ", max_tokens=50, seed=9, echo=True, stream_options={"include_usage": True}
    )
    assert texts == ["The " + sampler.generate("The ", 50, seed=9)]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 50
    assert all(chunk.usage is None for chunk in chunks[:-1])


def reference_with_stop(full: str, stops: list[str]) -> str:
    """The text ends before the first stop sequence to be completed."""
    for end in range(1, len(full) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if full[:end].endswith(stop):
                return full[: end - len(stop)]
    return full


def test_stop_sequences_plain_and_streamed(client, server, sampler):
    full = sampler.generate("The ", 1500, top_k=3, seed=21)
    long_stop = full[900:912]  # long enough to span several stream events
    assert full.find(long_stop) == 900
    for stops in (long_stop, [full[300:303], "\x00never"], ["e", "th"]):
        expected = reference_with_stop(full, [stops] if isinstance(stops, str) else stops)
        assert len(expected) < len(full)
        plain = client.completions.create(
            model=server.model_id, prompt="The ", max_tokens=1500, seed=21, stop=stops, extra_body={"top_k": 3}
        )
        assert plain.choices[0].text == expected and plain.choices[0].finish_reason == "stop"
        texts, finish, _ = stream_texts(
            client, server, 1, prompt="The ", max_tokens=1500, seed=21, stop=stops, extra_body={"top_k": 3}
        )
        assert texts == [expected] and finish == ["stop"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - x.max() - math.log(np.exp(x - x.max()).sum())


def test_logprobs_are_the_models_softmax(client, server, sampler):
    prompt, length = "The cat", 40
    response = client.completions.create(
        model=server.model_id, prompt=prompt, max_tokens=length, seed=4, temperature=1.5, logprobs=5, echo=True
    )
    choice = response.choices[0]
    text = choice.text
    assert text.startswith(prompt) and len(text) == len(prompt) + length
    lp = choice.logprobs
    assert lp.tokens == list(text) and lp.text_offset == list(range(len(text)))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before the first character
    run = sampler.runner(1)
    ids = [sampler.index[ch] for ch in text]
    for position in range(1, len(text)):
        expected = log_softmax(run(np.array([ids[position - 1]]))[0])  # the untempered softmax
        assert lp.token_logprobs[position] == pytest.approx(expected[ids[position]], abs=1e-9)
        best = np.argsort(-expected, kind="stable")[:5]
        assert list(lp.top_logprobs[position]) == [sampler.vocab[i] for i in best]
        assert list(lp.top_logprobs[position].values()) == pytest.approx(expected[best].tolist(), abs=1e-9)


def test_a_kept_prefix_gives_the_text_a_full_read_gives(server, sampler):
    """A prompt that repeats, and one that shares its first 1,500 characters with it, start from the state kept
    after their longest common 256-character boundary (the metrics count the hits): their texts equal the
    offline sampler's, which reads every prompt whole. Echo with logprobs reads its prompt whole too."""
    from helpers import ENGLISH

    from serve.logprobs import log_softmax as model_log_softmax

    book = ENGLISH.read_text(encoding="utf-8")
    first, sharing = book[:2000], book[:1500] + book[3000:3500]
    before = server.metrics()
    hits = "charlstm_prefix_cache_hits"
    run = sampler.runner(1)
    for prompt, seed in [(first, 1), (first, 2), (sharing, 3)]:
        status, body = server.post({"prompt": prompt, "max_tokens": 80, "top_k": 5, "seed": seed, "logprobs": 1})
        text = body["choices"][0]["text"]
        assert status == 200 and text == sampler.generate(prompt, 80, top_k=5, seed=seed)
        # the generated characters' log-probabilities: the same bits as a whole read of the prompt gives
        logits = [run(np.array([sampler.index[ch]]))[0].copy() for ch in prompt + text[:-1]][len(prompt) - 1 :]
        expected = [float(model_log_softmax(row[None])[0, sampler.index[ch]]) for row, ch in zip(logits, text)]
        assert body["choices"][0]["logprobs"]["token_logprobs"] == expected
        run = sampler.runner(1)  # a fresh state for the next prompt
    after = server.metrics()
    assert after[hits] - before[hits] == 2 and after["charlstm_prefix_cache_bytes"] > 0
    status, body = server.post({"prompt": first, "max_tokens": 3, "seed": 1, "logprobs": 1, "echo": True})
    assert status == 200 and server.metrics()[hits] == after[hits]


def test_server_picks_a_seed_that_reproduces_the_text(server, sampler):
    response = httpx.post(
        server.url + "/v1/completions",
        json={"model": server.model_id, "prompt": "A", "max_tokens": 64},
        headers=server.headers(),
    )
    body = response.json()
    seed = body["seed"]
    assert 0 <= seed < 2**53 and int(response.headers["x-charlstm-seed"]) == seed
    assert body["choices"][0]["text"] == sampler.generate("A", 64, seed=seed)


def test_64_concurrent_streams_with_distinct_seeds(server, sampler):
    prompts = ["The ", "def ", "It was ", "A"]

    async def one(client: httpx.AsyncClient, seed: int) -> str:
        body = {"prompt": prompts[seed % 4], "max_tokens": 120 + seed, "seed": seed, "stream": True, "top_k": 8}
        text = ""
        async with client.stream("POST", "/v1/completions", json=body, headers=server.headers()) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async def all_of_them() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, seed) for seed in range(64)))

    before = server.metrics()
    texts = asyncio.run(all_of_them())
    for seed, text in enumerate(texts):
        assert text == sampler.generate(prompts[seed % 4], 120 + seed, top_k=8, seed=seed), f"seed {seed}"
    after = server.metrics()
    # they shared the batch: more than one sequence per tick, and as many characters as they asked for
    assert after["charlstm_batch_size_sum"] - before["charlstm_batch_size_sum"] > 2 * (
        after["charlstm_batch_size_count"] - before["charlstm_batch_size_count"]
    )
    assert after["charlstm_generated_characters_total"] - before["charlstm_generated_characters_total"] == sum(
        120 + seed for seed in range(64)
    )


def test_a_client_that_goes_away_frees_its_row(server):
    body = {"prompt": "The ", "max_tokens": 200000, "stream": True, "seed": 1}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body, headers=server.headers()) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # the first event: it is generating
            time.sleep(0.3)
            assert server.metrics()["charlstm_active_sequences"] == 1
    server.wait_for(lambda: server.metrics()["charlstm_active_sequences"] == 0, what="the row to be freed")
    generated = server.metrics()["charlstm_generated_characters_total"]
    time.sleep(0.5)  # a row left running would generate thousands of characters meanwhile
    assert server.metrics()["charlstm_generated_characters_total"] == generated


def test_a_client_that_goes_away_before_a_plain_answer_frees_its_row(server):
    body = json.dumps({"prompt": "The ", "max_tokens": 200000, "seed": 2}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        raw.sendall(head.encode() + body)
        server.wait_for(lambda: server.metrics()["charlstm_active_sequences"] == 1, what="the row to join")
    server.wait_for(lambda: server.metrics()["charlstm_active_sequences"] == 0, what="the row to be freed")
    assert server.metrics()['charlstm_requests_total{route="/v1/completions",status="499"}'] >= 1


def test_models_health_and_metrics(server, client, trained_onnx):
    [model] = client.models.list().data
    card = model.model_dump()
    assert model.id == trained_onnx.name
    assert card["batch_invariant"] is True and card["weights"] == "fp32" and card["device"] == "cpu"
    assert card["layers"] == 2 and card["hidden"] == 128 and card["normalize"] == "NFC"
    assert card["vocab_size"] == len(Sampler(trained_onnx, device="cpu").vocab) and card["step"] == 400
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    metrics = server.metrics()
    assert metrics['charlstm_requests_total{route="/v1/completions",status="200"}'] >= 1
    assert metrics["charlstm_tick_seconds_count"] > 0 and "charlstm_queued_sequences" in metrics


def test_a_stream_ends_when_its_text_does_not_after_its_pause(trained_onnx, sampler):
    """With a minute between events, a short completion still ends at once: the last characters go out when
    they exist, not after the pause (nor the stop sequence's end, nor a constraint's)."""
    slow = Server(trained_onnx, "--stream-interval", "60")
    try:
        client = openai.OpenAI(base_url=slow.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
        for options in (dict(max_tokens=40), dict(max_tokens=400, stop=["e"]), dict(max_tokens=100, n=2)):
            texts, finish, _ = stream_texts(client, slow, options.pop("n", 1), prompt="The ", seed=3, **options)
            expected = sampler.generate("The ", options["max_tokens"], seed=3, num_samples=len(texts))
            expected = [expected] if isinstance(expected, str) else expected
            if "stop" in options:
                expected = [text[: text.index("e")] for text in expected]
            assert texts == expected and None not in finish
    finally:
        assert slow.stop() == 0
