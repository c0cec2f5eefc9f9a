"""Constrained generation, beam search and logit bias on the trained test model: what each option means (every
text matches, the constrained distribution is the model's renormalized, the end comes with the model's own
probability, beam search finds the exact best where it covers every text, a bias shifts the softmax), and the
same texts from Python, Node.js, the page and the HTTP service for the shared cases."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import DATA, ROOT, one_line_error, run_cli
from test_sampling_math import assert_follows

from serve.beam import best_offers
from serve.logprobs import log_softmax
from serve.sampler import Sampler, SamplingOptions

CASES_FILE = DATA / "constrained_cases.json"
CASES = json.loads(CASES_FILE.read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def sampler(trained_onnx) -> Sampler:
    return Sampler(trained_onnx, device="cpu")


def options_of(case: dict, sampler: Sampler) -> dict:
    """A shared case's options for Sampler.complete: logit_bias by token id."""
    options = {k: v for k, v in case.items() if k not in ("prime", "length")}
    if "logit_bias" in options:
        options["logit_bias"] = {sampler.index[ch]: bias for ch, bias in options["logit_bias"].items()}
    return options


def python_answers(sampler: Sampler) -> list[list[dict]]:
    return [
        [vars(g) for g in sampler.complete(case["prime"], case["length"], **options_of(case, sampler))]
        for case in CASES
    ]


def next_distribution(sampler: Sampler, text: str, bias: dict | None = None) -> np.ndarray:
    """The model's softmax (float64) of the next character after `text`, after the logit bias."""
    logits, _, _ = sampler.after(sampler.encode(text))
    if bias:
        logits = logits.copy()
        for token, value in bias.items():
            logits[0, token] += np.float32(value)
    return np.exp(log_softmax(logits)[0])


def is_prefix_of_a_match(sampler: Sampler, pattern: str, text: str) -> bool:
    automaton = sampler.constraint(SamplingOptions(regex=pattern))
    state = automaton.start
    for ch in text:
        if not automaton.allowed(state)[sampler.index[ch]]:
            return False
        state = automaton.advance(state, sampler.index[ch])
    return True


def test_every_finished_text_matches_in_full(sampler):
    """Over 12 patterns and 24 seeds each (sampled at temperature 1.3, so the model strays): a text that ended
    matches its pattern in full, and one cut by the length limit is a prefix of a match."""
    patterns = [
        r"[A-Z][a-z]{2,11}",
        r"\d{1,3}(,\d{3})*",
        r"(?i)the [a-z]+",
        r"[a-z]+(-[a-z]+)?",
        r"(yes|no)",
        r"[^aeiou\W\d_]{2,5}",
        r"\w+\.\w+\(\)",
        r"(?:ab|cd|ef)+",
        r"[a-z ]{5,}\.",
        r"a?b?c?d?e?",
        r"[A-Z]{2}\d{2}",
        r"(def|class) [a-z_]+:",
    ]
    for pattern in patterns:
        texts = sampler.complete("The ", 40, regex=pattern, temperature=1.3, seed=11, num_samples=24)
        for g in texts:
            if g.finish == "stop":
                assert re.fullmatch(pattern, g.text), (pattern, g.text)
            else:
                assert len(g.text) == 40 and is_prefix_of_a_match(sampler, pattern, g.text), (pattern, g.text)
            assert "\n" not in g.text


def test_the_constrained_pick_is_the_models_distribution_renormalized(sampler):
    """4,000 first characters under [aeiou ]: their counts follow the model's softmax over those characters
    alone (plain, and with temperature 0.7 and top_k 3 among the allowed)."""
    allowed = np.array([ch in "aeiou " for ch in sampler.vocab])
    p = next_distribution(sampler, "The ")
    for options, expect in (
        ({}, np.where(allowed, p, 0)),
        ({"temperature": 0.7, "top_k": 3}, None),
    ):
        texts = sampler.generate("The ", 1, regex="[aeiou ]", seed=5, num_samples=4000, **options)
        counts = np.bincount([sampler.index[t] for t in texts], minlength=len(sampler.vocab))
        if expect is None:  # the three most likely allowed characters, their tempered weights
            q = np.where(allowed, p, 0) ** (1 / 0.7)
            q[np.argsort(-q, kind="stable")[3:]] = 0
            expect = q
        assert_follows(counts, expect / expect.sum(), f"[aeiou ] {options}")


def test_the_end_comes_with_the_models_own_probability(sampler):
    """Choices "a" and "ab": after "a" the text may end (the newline) or go on with "b"; the share of "a" over
    4,000 samples is p(newline) / (p(newline) + p(b)) of the model after the prime and "a"."""
    texts = sampler.generate("The ", 5, choices=["a", "ab"], seed=9, num_samples=4000)
    p = next_distribution(sampler, "The a")
    share = p[sampler.index["\n"]] / (p[sampler.index["\n"]] + p[sampler.index["b"]])
    ended = sum(t == "a" for t in texts)
    sigma = math.sqrt(4000 * share * (1 - share))
    assert abs(ended - 4000 * share) < 5 * sigma, (ended, 4000 * share)
    assert set(texts) <= {"a", "ab"}


def test_logit_bias_shifts_the_softmax_and_minus_100_bans(sampler):
    """+3 on "e" and -100 on "t": 4,000 first characters follow softmax(logits + bias); "t" never comes."""
    bias = {sampler.index["e"]: 3.0, sampler.index["t"]: -100.0}
    texts = sampler.generate("The ", 1, logit_bias=bias, seed=3, num_samples=4000)
    counts = np.bincount([sampler.index[t] for t in texts], minlength=len(sampler.vocab))
    assert_follows(counts, next_distribution(sampler, "The ", bias), "bias")
    assert counts[sampler.index["t"]] == 0
    assert "t" not in sampler.generate("The ", 2000, logit_bias={sampler.index["t"]: -100}, seed=1)


def exhaustive(sampler: Sampler, prime: str, texts: list[str], end: str | None) -> list[tuple[float, str]]:
    """Every text's score (the sum of its characters' log-probabilities, and the end's), best first."""
    scored = []
    for text in texts:
        score = 0.0
        for i, ch in enumerate(text + (end or "")):
            logits, _, _ = sampler.after(sampler.encode(prime + text[:i]))
            score += float(log_softmax(logits)[0, sampler.index[ch]])
        scored.append((score, text))
    return sorted(scored, key=lambda st: (-st[0], [sampler.index[c] for c in st[1]]))


def test_the_kept_offers_are_the_best_with_ties_to_the_smaller_index():
    """best_offers against a full sort by (offer desc, index asc), on offers with many ties and refusals (-inf):
    the first `width` finite ones, returned in index order."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        beams, vocab, width = (int(n) for n in rng.integers(1, [6, 9, 12]))
        offers = np.round(rng.normal(size=(beams, vocab)) * 2) / 2  # half-units: ties at every cut
        offers[rng.random(offers.shape) < rng.random()] = -np.inf
        flat = offers.ravel()
        ranked = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
        expected = sorted(i for i in ranked[:width] if np.isfinite(flat[i]))
        assert best_offers(offers, width).tolist() == expected, (offers, width)


def test_beam_search_is_exact_where_it_covers_every_text(sampler):
    """[ab]{1,3}: its 14 texts scored one by one; 64 beams return the 5 best in that order, with those scores."""
    texts = ["".join(t) for n in (1, 2, 3) for t in __import__("itertools").product("ab", repeat=n)]
    best = exhaustive(sampler, "The ", texts, "\n")
    found = sampler.complete("The ", 10, regex="[ab]{1,3}", beam_width=64, num_samples=5)
    assert [g.text for g in found] == [text for _, text in best[:5]]
    assert np.allclose([g.score for g in found], [score for score, _ in best[:5]], rtol=0, atol=1e-9)
    assert all(g.finish == "stop" for g in found)


def test_unconstrained_beams_of_two_characters_are_the_exact_best(sampler):
    """Two characters, no constraint: 128 beams (more than the 100 first characters) hold every first character,
    so the 3 best of the 10,000 two-character texts come out, by score."""
    logits, h, c = sampler.after(sampler.encode("The "))
    first = log_softmax(logits)[0]  # (V,)
    V = len(sampler.vocab)
    second, _, _ = sampler.step(np.arange(V, dtype=np.int64), np.repeat(h, V, axis=1), np.repeat(c, V, axis=1))
    scores = first[:, None] + log_softmax(second)  # (V, V)
    order = np.argsort(-scores, axis=None, kind="stable")[:3]
    want = ["".join(sampler.vocab[i] for i in np.unravel_index(k, scores.shape)) for k in order]
    assert [g.text for g in sampler.complete("The ", 2, beam_width=128, num_samples=3)] == want


def reference_beams(sampler: Sampler, prime: str, length: int, width: int) -> list[tuple[float, str]]:
    """A plain beam search written from the definition: every live beam's continuation, the width best by
    (score desc, ids asc), each stepped alone."""
    beams = [(0.0, ())]
    for _ in range(length):
        offers = []
        for score, ids in beams:
            logits, _, _ = sampler.after(np.concatenate([sampler.encode(prime), np.array(ids, dtype=np.int64)]))
            for v, logp in enumerate(log_softmax(logits)[0]):
                offers.append((score + float(logp), ids + (v,)))
        beams = sorted(offers, key=lambda o: (-o[0], o[1]))[:width]
    return [(score, "".join(sampler.vocab[i] for i in ids)) for score, ids in beams]


def test_beam_search_equals_a_plain_reference_and_width_one_is_greedy(sampler):
    want = reference_beams(sampler, "In ", 12, 3)
    found = sampler.complete("In ", 12, beam_width=3, num_samples=3)
    assert [g.text for g in found] == [text for _, text in want]
    assert np.allclose([g.score for g in found], [s for s, _ in want], rtol=0, atol=1e-9)
    assert sampler.generate("In ", 60, beam_width=1) == sampler.generate("In ", 60, top_k=1)


def node() -> str:
    found = shutil.which("node")
    if found is None or not (ROOT / "serve" / "js" / "node_modules").is_dir():
        pytest.skip("no Node.js, or its packages are not installed (./setup.sh)")
    return found


def test_node_gives_pythons_texts_and_beams(sampler, trained_onnx):
    """The shared cases (tests/data/constrained_cases.json) in Node.js: the same texts, finishes and scores."""
    script = ROOT / "tests" / "constrained_cases.mjs"
    result = subprocess.run(
        [node(), str(script), str(trained_onnx), str(CASES_FILE)], capture_output=True, text=True, check=True
    )
    for case, theirs, ours in zip(CASES, json.loads(result.stdout), python_answers(sampler), strict=True):
        assert_same_generations(theirs, ours, case)


def assert_same_generations(theirs: list[dict], ours: list[dict], case: dict) -> None:
    """The same texts and finishes; scores within 1e-9 (two runtimes' exp and log may differ in the last bit)."""
    assert [(g["text"], g["finish"]) for g in theirs] == [(g["text"], g["finish"]) for g in ours], case
    for a, b in zip(theirs, ours):
        assert (a["score"] is None) == (b["score"] is None), case
        assert a["score"] is None or abs(a["score"] - b["score"]) < 1e-9, case


@pytest.fixture(scope="module")
def server(trained_onnx):
    from http_server import Server

    server = Server(trained_onnx, api_key=None)
    yield server
    assert server.stop() == 0


def http_body(case: dict, sampler: Sampler) -> dict:
    """A shared case as a completions request, in the service's (vLLM's and OpenAI's) field names."""
    names = {
        "regex": "guided_regex",
        "choices": "guided_choice",
        "num_samples": "n",
        "length": "max_tokens",
        "prime": "prompt",
    }
    body = {names.get(k, k): v for k, v in case.items() if k != "logit_bias"}
    if "logit_bias" in case:
        body["logit_bias"] = {str(sampler.index[ch]): v for ch, v in case["logit_bias"].items()}
    return body


def test_the_service_gives_pythons_texts_and_beams(server, sampler):
    """The shared cases over HTTP: each choice's text, finish_reason and (under beam search) score."""
    import httpx

    for case, ours in zip(CASES, python_answers(sampler), strict=True):
        response = httpx.post(server.url + "/v1/completions", json=http_body(case, sampler), timeout=60)
        assert response.status_code == 200, response.text
        theirs = [
            {"text": c["text"], "finish": c["finish_reason"], "score": c.get("score")}
            for c in sorted(response.json()["choices"], key=lambda c: c["index"])
        ]
        assert_same_generations(theirs, ours, case)


def test_an_openai_client_sends_vllms_fields(server, sampler):
    """The openai package, with guided_regex and use_beam_search in extra_body as vLLM's clients send them."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    answer = client.completions.create(
        model=server.model_id,
        prompt="The ",
        max_tokens=30,
        n=2,
        extra_body={"guided_regex": "[A-Z][a-z]+", "use_beam_search": True},
    )
    want = sampler.complete("The ", 30, regex="[A-Z][a-z]+", beam_width=2, num_samples=2)
    assert [c.text for c in answer.choices] == [g.text for g in want]
    assert [c.finish_reason for c in answer.choices] == [g.finish for g in want]


BAD_HTTP = [
    ({"guided_regex": "(a"}, "guided_regex", "missing ), unterminated subpattern"),
    ({"guided_regex": "ж"}, "guided_regex", "it needs 'ж' (U+0436)"),
    ({"guided_choice": []}, "guided_choice", "guided_choice must be a non-empty list of strings"),
    ({"guided_choice": ["aж"]}, "guided_choice", "has characters the model does not know"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex", "not both"),
    ({"end": "x"}, "end", "end applies to a constraint"),
    ({"logit_bias": {"100000": 1}}, "logit_bias", "is not a token id of this model"),
    ({"logit_bias": {"1": -101}}, "logit_bias", "must be a number in [-100, 100]"),
    ({"logit_bias": [1]}, "logit_bias", "must be an object"),
    ({"beam_width": 2, "temperature": 0.5}, "temperature", "beam search draws nothing"),
    ({"beam_width": 2, "seed": 1}, "seed", "beam search draws nothing"),
    ({"beam_width": 2, "stop": "x"}, "stop", "beam search draws nothing"),
    ({"beam_width": 2, "n": 3}, "n", "n (3) must be at most beam_width (2)"),
    ({"beam_width": 0}, "beam_width", "beam_width must be an integer between 1 and"),
]


@pytest.mark.parametrize("fields, param, message", BAD_HTTP, ids=[str(i) for i in range(len(BAD_HTTP))])
def test_bad_constraints_are_a_400_naming_the_field(server, fields, param, message):
    import httpx

    response = httpx.post(
        server.url + "/v1/completions", json={"prompt": "The ", "max_tokens": 5, **fields}, timeout=30
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


BAD_CLI = [
    (["--regex", "(a"], "missing ), unterminated subpattern"),
    (["--regex", "a(?=b)"], "lookahead (?=...) is outside the dialect"),
    (["--regex", "ж+"], "it needs 'ж' (U+0436), which the model's vocabulary lacks"),
    (["--choice", "aж"], "the choice 'aж' has characters the model does not know"),
    (["--beam", "3", "--top-k", "5"], "beam search draws nothing"),
    (["--beam", "2", "--num-samples", "3"], "num_samples (3) must be at most beam_width (2)"),
    (["--bias", "ж=3"], "is not in the model's vocabulary"),
    (["--bias", "e=300"], "must be a number in [-100, 100]"),
    (["--bias", "e"], "--bias takes CHARACTER=NUMBER"),
    (["--end", "x"], "end applies to a constraint"),
    (["--regex", "a", "--end", "xy"], "must be one character"),
]


@pytest.mark.parametrize("flags, message", BAD_CLI, ids=[" ".join(f) for f, _ in BAD_CLI])
def test_bad_constraints_end_the_clis_in_one_line(trained_onnx, flags, message):
    python = run_cli("-m", "serve.sample", str(trained_onnx), "--length", "5", *flags)
    assert python.returncode == 2 and message in one_line_error(python.stderr), python.stderr
    assert python.stdout == ""
    script = ROOT / "serve" / "js" / "sample.js"
    js = subprocess.run(
        [node(), str(script), str(trained_onnx), "--length", "5", *flags], capture_output=True, text=True
    )
    assert js.returncode == 2 and message in one_line_error(js.stderr), js.stderr
    assert js.stdout == ""


def test_the_clis_give_the_same_constrained_text_and_say_when_it_was_cut(trained_onnx, sampler):
    flags = ["--prime", "x", "--length", "8", "--regex", "[a-z]+\\.", "--seed", "7", "--bias", "e=2"]
    python = run_cli("-m", "serve.sample", str(trained_onnx), *flags)
    js = subprocess.run(
        [node(), str(ROOT / "serve" / "js" / "sample.js"), str(trained_onnx), *flags], capture_output=True, text=True
    )
    text = sampler.complete("x", 8, regex="[a-z]+\\.", seed=7, logit_bias={sampler.index["e"]: 2.0})[0]
    assert python.stdout == js.stdout == "x" + text.text + "\n"
    note = "note: the text reached --length 8 before the constraint was met in full"
    assert (note in python.stderr) == (note in js.stderr) == (text.finish == "length")
