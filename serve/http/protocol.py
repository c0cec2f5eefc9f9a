"""The completions request as OpenAI's API defines it: the JSON body's schema (CompletionBody, pydantic: each
field's type, range and meaning), checked once, and the CompletionRequest the service works from; a bad body is
an ApiError that names the field. Fields we do not know are ignored (as vLLM does); OpenAI fields we do not
implement are accepted at their neutral value only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.generation import MAX_BEAM, MAX_BIAS

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


NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "suffix": ("",)}  # best_of: 1 or n
NOTES = {  # what a range message adds for these fields
    "top_k": " (-1, 0 or null: every character)",
    "max_tokens": " (this server's --max-tokens)",
    "n": " (this server's --max-batch)",
    "beam_width": " (this server's --max-batch)",
}
SHAPES = {  # what these fields take, said whole when one is of the wrong type or length
    "guided_choice": "a non-empty list of strings",
    "end": "one character",
    "logit_bias": "an object mapping token ids to numbers",
}
SAMPLING = {"temperature": 1, "top_p": 1, "top_k": -1, "seed": None, "logprobs": None, "stop": None}


def _refuse(message: str, param: str | None = None) -> PydanticCustomError:
    """A refusal in the request's own words; `param` names the field where a check spans several."""
    return PydanticCustomError("request", message, {"param": param} if param else None)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = Field(False, description="a last event with the usage")


class CompletionBody(BaseModel):
    """POST /v1/completions's body. Ranges that depend on the server (--max-tokens, --max-batch, the
    vocabulary) come from the validation context: {"max_tokens", "max_n", "vocab_size"}."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = Field(None, description="the served model's id; none: the served model")
    prompt: Any = Field("", description="one prompt: a string, or a list of one string")
    max_tokens: int | None = Field(16, description="characters to generate per choice")
    temperature: float | None = Field(1.0, ge=0, description="0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling; 1 = all")
    top_k: int | None = Field(None, ge=-1, description="the k most likely; -1, 0 or null: all")
    seed: int | None = Field(None, ge=0, le=SEED_LIMIT - 1, description="the same seed gives the same text")
    n: int | None = Field(1, description="choices (each its own sample index of the seed)")
    stop: Any = Field((), description="a string or up to 4: the text ends before the first to appear")
    stream: bool | None = Field(False, description="server-sent events")
    stream_options: StreamOptions | None = Field(None, description="with stream: include_usage")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="the top next characters' log-probs")
    echo: bool | None = Field(False, description="the prompt first, as the model read it")
    unknown: Literal["error", "skip"] | None = Field("error", description="prompt characters the model lacks")
    logit_bias: dict[str, float] | None = Field(None, description="token id -> a number in [-100, 100]")
    guided_regex: str | None = Field(None, description="the generated text matches it in full")
    guided_choice: list[str] | None = Field(None, min_length=1, description="the generated text is one of them")
    end: str | None = Field(None, min_length=1, max_length=1, description="the character that ends a constraint")
    beam_width: int | None = Field(None, description="beam search with this many beams")
    use_beam_search: bool | None = Field(False, description="vLLM's name: beam search with n beams")
    best_of: Any = Field(None, description="not implemented: only 1 or n")
    presence_penalty: Any = Field(None, description="not implemented: only 0")
    frequency_penalty: Any = Field(None, description="not implemented: only 0")
    suffix: Any = Field(None, description='not implemented: only ""')

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]  # a batch of one prompt: the same request
        if prompt is None:
            return ""
        if not isinstance(prompt, str):
            raise _refuse("prompt must be a string (one prompt per request; token ids are not accepted)")
        return prompt

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, stop: Any) -> tuple[str, ...]:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _refuse("stop must be a string or a list of strings")
        if len(stops) > MAX_STOPS:
            raise _refuse(f"stop may hold at most {MAX_STOPS} sequences, got {len(stops)}")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise _refuse(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return tuple(stops)

    @field_validator("max_tokens", "n", "beam_width")
    @classmethod
    def _server_limits(cls, value: int | None, info: ValidationInfo) -> int | None:
        high = info.context["max_tokens"] if info.field_name == "max_tokens" else info.context["max_n"]
        high = min(high, MAX_BEAM) if info.field_name == "beam_width" else high
        if value is not None and not 1 <= value <= high:
            name = info.field_name
            raise _refuse(f"{name} must be an integer between 1 and {high}{NOTES[name]}, got {value}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        vocab_size = info.context["vocab_size"]
        for key, value in (bias or {}).items():
            if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
                raise _refuse(f"logit_bias: {key!r} is not a token id of this model (0 to {vocab_size - 1})")
            if not -MAX_BIAS <= value <= MAX_BIAS:
                raise _refuse(f"logit_bias: the bias of token {key} must be a number in [-100, 100]")
        return bias

    @model_validator(mode="after")
    def _combinations(self) -> CompletionBody:
        n = self.n or 1
        for name, neutral in {**NEUTRAL, "best_of": (1, n)}.items():
            value = getattr(self, name)
            if value is not None and not any(value == ok and type(value) is type(ok) for ok in neutral):
                shown = ", ".join(json.dumps(ok) for ok in (None, *neutral))
                raise _refuse(f"{name} is not supported by this server; only its neutral value ({shown})", name)
        if self.stream_options is not None and not self.stream:
            raise _refuse("stream_options is an object, allowed only when stream is true", "stream_options")
        if self.guided_regex is not None and self.guided_choice is not None:
            raise _refuse("give guided_regex or guided_choice, not both", "guided_regex")
        if self.end is not None and self.guided_regex is None and self.guided_choice is None:
            raise _refuse("end applies to a constraint: give guided_regex or guided_choice with it", "end")
        width = self.beam_width if self.beam_width is not None else (n if self.use_beam_search else None)
        if width is not None and n > width:
            raise _refuse(f"n ({n}) must be at most beam_width ({width}): the n best beams are returned", "n")
        if width is not None:
            given = [name for name, neutral in SAMPLING.items() if _given(getattr(self, name), neutral, name)]
            if given:
                raise _refuse(
                    "beam search draws nothing and scores by untempered log-probabilities: leave out "
                    + ", ".join(given),
                    given[0],
                )
        return self


def _given(value: Any, neutral: Any, name: str) -> bool:
    """A sampling field set to something other than its neutral value (top_k: -1, 0 and null all mean all)."""
    if name == "top_k":
        return value not in (None, -1, 0)
    if name == "stop":
        return bool(value)
    return value not in (None, neutral)


def _explain(error: dict) -> ApiError:
    """One ApiError for pydantic's first error: the field, what it must be, what it got."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    param = (error.get("ctx") or {}).get("param") or (str(loc[0]) if loc else None)
    if kind == "request":
        return ApiError(400, error["msg"], param)
    name, got = ".".join(str(part) for part in loc), json.dumps(value, default=str)
    if param == "logit_bias" and len(loc) > 1:
        return ApiError(400, f"logit_bias: the bias of token {loc[1]} must be a number in [-100, 100]", param)
    wanted = {
        "int_type": "an integer",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "string_type": "a string",
        "dict_type": "an object",
        "model_type": "an object",
        "list_type": "a list",
        "literal_error": str((error.get("ctx") or {}).get("expected", "")).replace("'", '"'),
        "too_short": "non-empty",
        "string_too_short": "one character",
        "string_too_long": "one character",
    }
    if kind in wanted:
        return ApiError(400, f"{name} must be {SHAPES.get(name, wanted[kind])}, got {got}", param)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return ApiError(400, f"{name} must be {_range(str(loc[0]))}{NOTES.get(name, '')}, got {got}", param)
    return ApiError(400, f"{name}: {error['msg']}", param)


def _range(field: str) -> str:
    """ "an integer between 0 and 5", ">= 0", "in (0, 1]": the field's bounds as the schema states them."""
    bounds = {}
    for item in CompletionBody.model_fields[field].metadata:
        bounds.update({kind: getattr(item, kind) for kind in ("gt", "ge", "lt", "le") if hasattr(item, kind)})
    integer = CompletionBody.model_fields[field].annotation in (int, int | None)
    if integer and "ge" in bounds and "le" in bounds:
        return f"an integer between {bounds['ge']} and {bounds['le']}"
    if "le" in bounds or "lt" in bounds:
        low = f"{'(' if 'gt' in bounds else '['}{bounds.get('gt', bounds.get('ge')):g}"
        return f"in {low}, {bounds.get('le', bounds.get('lt')):g}{']' if 'le' in bounds else ')'}"
    kind, bound = next(iter(bounds.items()))
    return ("an integer " if integer else "") + f"{'>' if kind == 'gt' else '>='} {bound}"


def parse_completion(raw: bytes, vocab_size: int, max_tokens: int, max_n: int) -> CompletionRequest:
    """A request body -> CompletionRequest; ApiError(400) naming the first field that is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    context = {"vocab_size": vocab_size, "max_tokens": max_tokens, "max_n": max_n}
    try:
        asked = CompletionBody.model_validate(body, context=context)
    except ValidationError as e:
        raise _explain(e.errors()[0]) from None
    n = asked.n or 1
    top_p, top_k = asked.top_p if asked.top_p is not None else 1.0, asked.top_k
    return CompletionRequest(
        model=asked.model,
        prompt=asked.prompt,
        max_tokens=asked.max_tokens or 16,
        temperature=asked.temperature if asked.temperature is not None else 1.0,
        top_p=None if top_p == 1 else top_p,
        top_k=None if top_k is None or top_k <= 0 or top_k >= vocab_size else top_k,  # k >= V keeps every char
        seed=asked.seed,
        n=n,
        stop=asked.stop,
        stream=bool(asked.stream),
        include_usage=bool(asked.stream_options and asked.stream_options.include_usage),
        logprobs=asked.logprobs,
        echo=bool(asked.echo),
        unknown=asked.unknown or "error",
        regex=asked.guided_regex,
        choices=None if asked.guided_choice is None else tuple(asked.guided_choice),
        end=asked.end,
        beam_width=asked.beam_width if asked.beam_width is not None else (n if asked.use_beam_search else None),
        logit_bias=tuple((int(key), float(value)) for key, value in (asked.logit_bias or {}).items()),
    )
