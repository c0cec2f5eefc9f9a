"""What the HTTP service answers to bad requests (OpenAI's error object, the right status, never a 500), when it
is full (429 with Retry-After), and on SIGTERM (503 while draining, running streams end, exit 0)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading

import httpx
import openai
import pytest
from helpers import one_line_error, run_cli
from http_server import API_KEY, Server

from serve.sampler import Sampler


@pytest.fixture(scope="module")
def server(trained_onnx):
    server = Server(trained_onnx, "--max-tokens", "1000", "--max-batch", "8", "--max-body", "4096")
    yield server
    assert server.stop() == 0


GOOD = {"prompt": "The ", "max_tokens": 5, "seed": 1}

BAD = [  # (what is sent, the status, the field the error names, a word its message has)
    (b"{not json", 400, None, "JSON"),
    (b"[1, 2]", 400, None, "object"),
    (json.dumps({**GOOD, "prompt": "x" * 5000}).encode(), 413, None, "4,096"),
    (
        {**GOOD, "prompt": "The \u0416\u0436 \U0001f600"},
        400,
        "prompt",
        "the prompt has characters the model does not know",
    ),
    ({**GOOD, "prompt": ["a", "b"]}, 400, "prompt", "one prompt"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens", "between 1 and 1000"),
    ({**GOOD, "max_tokens": 1001}, 400, "max_tokens", "--max-tokens"),
    ({**GOOD, "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ({**GOOD, "n": 9}, 400, "n", "--max-batch"),
    ({**GOOD, "temperature": -0.5}, 400, "temperature", ">= 0"),
    ({**GOOD, "top_p": 0}, 400, "top_p", "(0, 1]"),
    ({**GOOD, "top_p": 1.5}, 400, "top_p", "(0, 1]"),
    ({**GOOD, "top_k": "5"}, 400, "top_k", "integer"),
    ({**GOOD, "top_k": 2.5}, 400, "top_k", "integer"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ({**GOOD, "stop": [""]}, 400, "stop", "1 to"),
    ({**GOOD, "logprobs": 6}, 400, "logprobs", "between 0 and 5"),
    ({**GOOD, "seed": -1}, 400, "seed", "integer"),
    ({**GOOD, "stream": "yes"}, 400, "stream", "true or false"),
    ({**GOOD, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream is true"),
    ({**GOOD, "best_of": 3}, 400, "best_of", "not supported"),
    ({**GOOD, "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ({**GOOD, "unknown": "drop"}, 400, "unknown", "skip"),
    ({**GOOD, "model": "gpt-4"}, 404, "model", "does not exist"),
]


@pytest.mark.parametrize("body, status, param, word", BAD, ids=[f"{i}-{b[1]}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openais_error_and_the_server_keeps_serving(server, body, status, param, word):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + "/v1/completions", content=content, headers=server.headers())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert word in error["message"]
    assert server.post(GOOD)[0] == 200


def test_neutral_and_unknown_fields_are_accepted(server, trained_onnx):
    neutral = {"best_of": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "suffix": None}
    status, body = server.post({**GOOD, **neutral, "user": "someone", "a_field_from_the_future": [1]})
    assert status == 200
    assert body["choices"][0]["text"] == Sampler(trained_onnx, device="cpu").generate("The ", 5, seed=1)


def test_unknown_characters_skipped_on_request(server, trained_onnx):
    status, body = server.post({**GOOD, "prompt": "Th\u0416e ", "unknown": "skip", "echo": True})
    assert status == 200 and body["choices"][0]["text"].startswith("The ")
    assert body["usage"]["prompt_tokens"] == 4


def test_keys_routes_and_methods(server):
    no_key = httpx.post(server.url + "/v1/completions", json=GOOD)
    wrong = httpx.post(server.url + "/v1/completions", json=GOOD, headers={"Authorization": "Bearer nope"})
    for response in (no_key, wrong, httpx.get(server.url + "/v1/models")):
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.completions.create(model=server.model_id, prompt="The ", max_tokens=3)
    for response in (httpx.get(server.url + "/v1/nothing"), httpx.get(server.url + "/v1/completions")):
        assert response.status_code in (404, 405) and "error" in response.json()
    assert server.post(GOOD)[0] == 200


def test_429_when_the_batch_and_the_queue_are_full(trained_onnx):
    server = Server(trained_onnx, "--max-batch", "2", "--max-queue", "1", "--max-tokens", "1000000")
    try:
        long = {"prompt": "The ", "max_tokens": 1000000, "stream": True}
        with httpx.Client(base_url=server.url, timeout=30, headers=server.headers()) as client:
            streams = [contextlib.ExitStack() for _ in range(3)]
            for stack in streams:  # two rows in the batch, one request waiting
                stack.enter_context(client.stream("POST", "/v1/completions", json=long))
            server.wait_for(lambda: server.metrics()["charlstm_queued_requests"] == 1, what="one waiting request")
            assert server.metrics()["charlstm_active_sequences"] == 2
            full = client.post("/v1/completions", json=GOOD)
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0).completions.create(
                    model=server.model_id, prompt="a", max_tokens=2
                )
            streams[0].close()  # a row frees: the waiting request joins the batch
            server.wait_for(lambda: server.metrics()["charlstm_queued_requests"] == 0, what="the queue to move")
            assert server.metrics()["charlstm_active_sequences"] == 2
            for stack in streams[1:]:
                stack.close()
            server.wait_for(lambda: server.metrics()["charlstm_active_sequences"] == 0, what="rows to be freed")
            assert client.post("/v1/completions", json=GOOD).status_code == 200
    finally:
        assert server.stop() == 0


def test_sigterm_drains_then_exits_0(trained_onnx):
    """A stream and a prompt still being read beside the batch both end with `length` at the drain's end."""
    server = Server(
        trained_onnx,
        *("--drain-seconds", "2", "--max-tokens", "10000000", "--stream-interval", "0.05"),
        *("--max-prompt", "3000000", "--max-body", "10000000"),
    )
    events: list[dict] = []
    answers: list[httpx.Response] = []

    def read_long_prompt():
        body = {"prompt": "The cat sat. " * 200_000, "max_tokens": 5}  # seconds to read, even on this model
        answers.append(httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=60))

    def read_stream():
        body = {"prompt": "The ", "max_tokens": 10000000, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers()) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]) if line[6:].startswith("{") else {"done": True})

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    try:
        server.wait_for(lambda: len(events) > 2, what="the stream to start")
        long_prompt = threading.Thread(target=read_long_prompt, daemon=True)
        long_prompt.start()
        server.wait_for(lambda: server.metrics()["charlstm_prompts_read_beside"] == 1, what="the prompt's reading")
        server.process.send_signal(signal.SIGTERM)
        server.wait_for(lambda: httpx.get(server.url + "/health").status_code == 503, what="draining")
        refused = httpx.post(server.url + "/v1/completions", json=GOOD, headers=server.headers())
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
        assert server.process.wait(30) == 0
        reader.join(10)
        assert events[-1] == {"done": True} and events[-2]["choices"][0]["finish_reason"] == "length"
        long_prompt.join(10)
        choice = answers[0].json()["choices"][0]
        assert answers[0].status_code == 200 and (choice["text"], choice["finish_reason"]) == ("", "length")
        assert not any("Traceback" in line for line in server.stderr)
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_startup_errors_are_one_line(trained_onnx, tmp_path):
    not_a_model = tmp_path / "x.onnx"
    not_a_model.write_text("hello")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for args in (
            [str(tmp_path / "missing.onnx"), "--port", "0"],
            [str(not_a_model), "--port", "0"],
            [str(trained_onnx), "--port", "0", "--max-batch", "0"],
            [str(trained_onnx), "--port", "70000"],
            [str(trained_onnx), "--port", "0", "--threads", "0"],
            [str(trained_onnx), "--port", "0", "--prefix-cache-mb", "-1"],
            [str(trained_onnx), "--port", str(busy.getsockname()[1])],
        ):
            result = run_cli("-m", "serve.http", *args)
            assert result.returncode == 2, args
            assert one_line_error(result.stderr).startswith("error: ")
