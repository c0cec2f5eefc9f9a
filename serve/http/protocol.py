"""The completions request as OpenAI's API defines it: JSON body -> a checked CompletionRequest, or an ApiError
that names the field. Fields we do not know are ignored (as vLLM does); OpenAI fields we do not implement are
accepted at their neutral value only."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

MAX_STOPS = 4  # OpenAI's limit on `stop` sequences
MAX_STOP_CHARS = 256  # the longest stop sequence: the stream holds back at most this much text
MAX_LOGPROBS = 5  # OpenAI caps completions' logprobs at 5
SEED_LIMIT = 1 << 64  # seeds are 64-bit keys of the shared generator (serve/sampler.py uniform)


class ApiError(Exception):
    """An error answered as OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "service_unavailable",
    }

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    """One POST /v1/completions, checked. Lengths count characters (a token is a character here)."""

    model: str | None  # the served model's id (None: the served model)
    prompt: str  # "" starts as Sampler starts: from a newline
    max_tokens: int  # characters to generate per choice
    temperature: float  # 0 = greedy
    top_p: float | None  # None = all (1.0 means the same)
    top_k: int | None  # None = all (the API's -1, 0 and null)
    seed: int | None  # None: the server picks one and returns it
    n: int  # choices, choice i uses the generator's sample index i (Sampler's num_samples)
    stop: tuple[str, ...]  # the text ends before the first of these to appear
    stream: bool  # server-sent events
    include_usage: bool  # stream_options.include_usage: a last event with the usage
    logprobs: int | None  # the top next characters to return with their log-probabilities; None = none
    echo: bool  # the prompt first, as the model read it
    unknown: str  # prompt characters the model lacks: `error` names them, `skip` drops them
    regex: str | None = None  # guided_regex: the generated text matches it in full
    choices: tuple[str, ...] | None = None  # guided_choice: the generated text is one of them
    end: str | None = None  # the character that ends a constrained text ("\n" when None)
    beam_width: int | None = None  # beam search with this many beams (use_beam_search: n of them)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs, added to the logits first


def _integer(body: dict, name: str, default, low: int, high: int | None, extra: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be an integer {bound}{extra}, got {json.dumps(value)}", name)
    return value


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", name)
    return float(value)


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _neutral(body: dict, n: int) -> None:
    """OpenAI fields this service does not implement: their neutral value is accepted, anything else is a 400."""
    neutral = {
        "best_of": (None, 1, n),
        "presence_penalty": (None, 0, 0.0),
        "frequency_penalty": (None, 0, 0.0),
        "suffix": (None, ""),
    }
    for name, allowed in neutral.items():
        value = body.get(name)
        if not any(value == ok and type(value) is type(ok) for ok in allowed if ok is not None) and value is not None:
            shown = ", ".join(json.dumps(ok) for ok in allowed)
            raise ApiError(400, f"{name} is not supported by this server; only its neutral value ({shown})", name)


def _prompt(body: dict) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one prompt: the same request
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request; token ids are not accepted)", "prompt")
    return prompt


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop may hold at most {MAX_STOPS} sequences, got {len(stops)}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def parse_completion(raw: bytes, vocab_size: int, max_tokens: int, max_n: int) -> CompletionRequest:
    """A request body -> CompletionRequest; ApiError(400) naming the first field that is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    n = _integer(body, "n", 1, 1, max_n, " (this server's --max-batch)")
    _neutral(body, n)
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(400, f"temperature must be >= 0, got {temperature:g}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p:g}", "top_p")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1):
        raise ApiError(
            400, f"top_k must be an integer >= 1, or -1, 0 or null for all, got {json.dumps(top_k)}", "top_k"
        )
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise ApiError(400, "stream_options is an object, allowed only when stream is true", "stream_options")
    unknown = body.get("unknown", "error")
    if unknown not in ("error", "skip"):
        raise ApiError(400, f'unknown must be "error" or "skip", got {json.dumps(unknown)}', "unknown")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    request = CompletionRequest(
        model=model,
        prompt=_prompt(body),
        max_tokens=_integer(body, "max_tokens", 16, 1, max_tokens, " (this server's --max-tokens)"),
        temperature=temperature,
        top_p=None if top_p == 1 else top_p,
        top_k=None if top_k is None or top_k <= 0 or top_k >= vocab_size else top_k,  # k >= V keeps every char
        seed=_integer(body, "seed", None, 0, SEED_LIMIT - 1),
        n=n,
        stop=_stop(body),
        stream=stream,
        include_usage=bool(options and _boolean(options, "include_usage")),
        logprobs=_integer(body, "logprobs", None, 0, MAX_LOGPROBS),
        echo=_boolean(body, "echo"),
        unknown=unknown,
        logit_bias=_logit_bias(body, vocab_size),
        **_constraint(body),
        beam_width=_beam_width(body, n, max_n),
    )
    if request.beam_width is not None:
        _check_beam(body, request)
    return request


def _logit_bias(body: dict, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias: {"token id": bias in [-100, 100]}; a token here is a character of the vocabulary."""
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise ApiError(400, "logit_bias must be an object mapping token ids to numbers", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
            raise ApiError(
                400, f"logit_bias: {key!r} is not a token id of this model (0 to {vocab_size - 1})", "logit_bias"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ApiError(400, f"logit_bias: the bias of token {key} must be a number in [-100, 100]", "logit_bias")
        pairs.append((int(key), float(value)))
    return tuple(pairs)


def _constraint(body: dict) -> dict:
    """guided_regex or guided_choice (vLLM's names), and the end character (ours)."""
    regex, choices, end = body.get("guided_regex"), body.get("guided_choice"), body.get("end")
    if regex is not None and choices is not None:
        raise ApiError(400, "give guided_regex or guided_choice, not both", "guided_regex")
    if regex is not None and not isinstance(regex, str):
        raise ApiError(400, "guided_regex must be a string", "guided_regex")
    if choices is not None and (
        not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)
    ):
        raise ApiError(400, "guided_choice must be a non-empty list of strings", "guided_choice")
    if end is not None and (not isinstance(end, str) or len(end) != 1):
        raise ApiError(400, f"end must be one character, got {json.dumps(end)}", "end")
    if end is not None and regex is None and choices is None:
        raise ApiError(400, "end applies to a constraint: give guided_regex or guided_choice with it", "end")
    return {"regex": regex, "choices": None if choices is None else tuple(choices), "end": end}


def _beam_width(body: dict, n: int, max_n: int) -> int | None:
    """beam_width (ours), or vLLM's use_beam_search with n beams."""
    width = _integer(body, "beam_width", None, 1, max_n, " (this server's --max-batch)")
    if width is None and _boolean(body, "use_beam_search"):
        width = n
    if width is not None and n > width:
        raise ApiError(400, f"n ({n}) must be at most beam_width ({width}): the n best beams are returned", "n")
    return width


def _check_beam(body: dict, request: CompletionRequest) -> None:
    """Beam search draws nothing: the sampling fields, stop sequences and logprobs are refused with it."""
    drawn = {"temperature": 1, "top_p": 1, "top_k": -1, "seed": None, "logprobs": None, "stop": None}
    given = [name for name, neutral in drawn.items() if body.get(name) not in (None, neutral) and body.get(name) != []]
    if body.get("top_k") == 0:
        given.remove("top_k")
    if given:
        raise ApiError(
            400,
            f"beam search draws nothing and scores by untempered log-probabilities: leave out {', '.join(given)}",
            given[0],
        )
