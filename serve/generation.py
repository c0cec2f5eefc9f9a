"""What a generation is asked (SamplingOptions, checked against the model) and what it gives (Generation)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from serve.errors import SamplerError

MAX_BIAS = 100.0  # OpenAI's range for logit_bias
MAX_BEAM = 1024  # beams stepped together, at most


@dataclass(frozen=True)
class SamplingOptions:
    """How characters are picked; checked by Sampler.stream before the first one."""

    top_k: int | None = None  # sample among the k most likely (1 = greedy); None = all
    temperature: float = 1.0  # logits are divided by it; 0 = greedy
    top_p: float | None = None  # then keep the smallest set holding this much of the mass (nucleus); None = all
    seed: int | None = None  # the same seed gives the same text; None = a fresh one
    num_samples: int = 1  # sequences advanced together (under beam search: the best beams returned)
    unknown: str = "error"  # prime characters the model lacks: `error` names them, `skip` drops them
    regex: str | None = None  # the generated text matches it in full (docs/constrained.md, the dialect)
    choices: tuple[str, ...] | list[str] | None = None  # the generated text is one of them
    end: str | None = None  # under a constraint, the character that ends a text ("\n" when None)
    beam_width: int | None = None  # beam search with this many beams (1 = greedy); None = sampling
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]


@dataclass(frozen=True)
class Generation:
    """One generated text and why it ended."""

    text: str  # without the prime, and without the end character that ended it
    finish: str  # "stop": the end character or a constraint ended it; "length": it reached the limit
    score: float | None = None  # beam search: the sum of its characters' log-probabilities


def check_options(length: int, options: SamplingOptions, vocab_size: int) -> None:
    """SamplerError (one line) for the first option that is wrong."""
    top_k, temperature, top_p = options.top_k, options.temperature, options.top_p
    if not isinstance(length, int) or length < 0:
        raise SamplerError(f"length must be an integer >= 0, got {length!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab_size):
        raise SamplerError(f"top_k must be between 1 and the vocabulary size {vocab_size}, got {top_k!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise SamplerError(f"temperature must be >= 0, got {temperature!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise SamplerError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(options.num_samples, int) or options.num_samples < 1:
        raise SamplerError(f"num_samples must be an integer >= 1, got {options.num_samples!r}")
    if options.end is not None and options.regex is None and options.choices is None:
        raise SamplerError("end applies to a constraint: give a regex or choices with it")
    check_beam(options)
    bias_vector(options.logit_bias, vocab_size)


def check_beam(options: SamplingOptions) -> None:
    width = options.beam_width
    if width is None:
        return
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_BEAM:
        raise SamplerError(f"beam_width must be an integer between 1 and {MAX_BEAM}, got {width!r}")
    given = [
        name
        for name, value, neutral in (
            ("top_k", options.top_k, None),
            ("top_p", options.top_p, None),
            ("temperature", options.temperature, 1.0),
            ("seed", options.seed, None),
        )
        if value != neutral
    ]
    if given:
        raise SamplerError(
            f"beam search draws nothing and scores by untempered log-probabilities: leave out {', '.join(given)}"
        )
    if options.num_samples > width:
        raise SamplerError(f"num_samples ({options.num_samples}) must be at most beam_width ({width})")


def bias_vector(logit_bias: dict, vocab_size: int) -> np.ndarray | None:
    """logit_bias as a (V,) float32 vector to add to the logits; None when there is none."""
    if not isinstance(logit_bias, dict):
        raise SamplerError("logit_bias must map token ids to numbers")
    for token, bias in logit_bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise SamplerError(f"logit_bias: {token!r} is not a token id of this model (0 to {vocab_size - 1})")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -MAX_BIAS <= bias <= MAX_BIAS:
            raise SamplerError(f"logit_bias: the bias of token {token} must be a number in [-100, 100], got {bias!r}")
    return bias_array(logit_bias.items(), vocab_size)


def bias_array(pairs: Iterable[tuple[int, float]], vocab_size: int) -> np.ndarray | None:
    """Checked (token id, bias) pairs as the (V,) float32 vector added to the logits; None when there are none.
    The service's schema checks its pairs (serve/http/protocol.py), the Sampler's bias_vector its own."""
    pairs = list(pairs)
    if not pairs:
        return None
    vector = np.zeros(vocab_size, dtype=np.float32)
    for token, bias in pairs:
        vector[token] = bias
    return vector
