"""Constraints compiled over a vocabulary: each mask against Python's re by brute force on many generated
patterns, the same masks from the JavaScript core, the same character rules in both runtimes over all of
Unicode, and every bad constraint as one line."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from helpers import ROOT

from serve.constrain import DEAD, PatternError, compile_constraint
from serve.constrain.charsets import CLASSES, case_variants

VOCAB = list("abA0 .é_")  # no end character among them: these tests read acceptance directly
ATOMS = [
    "a",
    "b",
    "A",
    "0",
    " ",
    "é",
    "\\.",
    ".",
    "[ab]",
    "[^ab]",
    "[A-Z0-9]",
    "\\d",
    "\\w",
    "\\W",
    "\\s",
    "[-.]",
    "[\\d_]",
    "[^\\W\\d]",
    "c",  # these two match nothing over VOCAB: branches through them are dead
    "[x-z]",
]
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "*?", "{0}"]
SHORT = 4  # the brute force reads every string of up to this many characters


def random_pattern(rng: random.Random, depth: int = 0) -> str:
    """A pattern of the dialect: atoms, groups, alternation and quantifiers, sometimes under (?i)."""
    items = []
    for _ in range(rng.randint(1, 4)):
        if depth < 2 and rng.random() < 0.25:
            inner = "|".join(random_pattern(rng, depth + 1) for _ in range(rng.randint(1, 3)))
            opener = rng.choice(["(", "(?:", "(?i:", f"(?P<g{rng.randrange(10**9)}>"])
            atom = f"{opener}{inner})"
        else:
            atom = rng.choice(ATOMS)
        items.append(atom + rng.choice(QUANTIFIERS))
    text = "".join(items)
    return ("(?i)" + text) if depth == 0 and rng.random() < 0.2 else text


def random_walks(automaton, rng: random.Random, steps: int, end_id: int | None = None):
    """Token walks through allowed characters (never the end), each from the start."""
    state, walk = automaton.start, []
    for _ in range(steps):
        allowed = [i for i, ok in enumerate(automaton.allowed(state)) if ok and i != end_id]
        if not allowed:
            break
        token = rng.choice(allowed)
        walk.append(token)
        state = automaton.advance(state, token)
    return walk


def patterns(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    found = []
    while len(found) < count:
        pattern = random_pattern(rng)
        try:
            compile_constraint(VOCAB, regex=pattern, end="\x00")
        except PatternError:
            continue  # nothing over the vocabulary matches it
        found.append(pattern)
    return found


def shortest_completion(automaton, state: int) -> str:
    """The shortest text that takes `state` to a full match, through allowed characters only."""
    seen, frontier = {state}, [(state, "")]
    while frontier:
        grown = []
        for s, text in frontier:
            if automaton.accepting(s):
                return text
            for i in np.flatnonzero(automaton.allowed(s)):
                t = automaton.advance(s, int(i))
                if t not in seen:
                    seen.add(t)
                    grown.append((t, text + VOCAB[i]))
        frontier = grown
    raise AssertionError("an allowed state with no way to a full match")


def test_every_mask_against_pythons_re_by_brute_force():
    """For 200 generated patterns, by Python's re (another engine, not an automaton): every allowed character has
    a full match after it (the shortest one the automaton finds is one by re.fullmatch), and every character
    that begins a full match of up to 4 characters, found by trying them all, is allowed; a state accepts
    exactly when re.fullmatch matches the text."""
    strings = ["".join(chars) for n in range(SHORT + 1) for chars in itertools.product(VOCAB, repeat=n)]
    checked = 0
    for pattern in patterns(200):
        compiled = re.compile(pattern)
        automaton = compile_constraint(VOCAB, regex=pattern, end="\x00")
        viable = {s[:n] for s in strings if compiled.fullmatch(s) for n in range(len(s) + 1)}
        frontier = [("", automaton.start)]
        for _ in range(SHORT):
            grown = []
            for text, state in frontier:
                assert automaton.accepting(state) == (compiled.fullmatch(text) is not None), (pattern, text)
                mask = automaton.allowed(state)
                for i, ch in enumerate(VOCAB):
                    if mask[i]:
                        after = automaton.advance(state, i)
                        assert compiled.fullmatch(text + ch + shortest_completion(automaton, after)), (
                            pattern,
                            text,
                            ch,
                        )
                        grown.append((text + ch, after))
                    else:
                        assert text + ch not in viable, (pattern, text, ch)
                    checked += 1
            frontier = grown[:64]
    assert checked > 10_000


def test_the_end_character_never_appears_inside_and_ends_a_full_match():
    vocab = list("ab\n ")
    automaton = compile_constraint(vocab, regex="a[ab\\s]*b", end="\n")
    end = vocab.index("\n")
    state = automaton.start
    for ch in "a b":
        assert not automaton.allowed(state)[end]  # not a full match yet
        state = automaton.advance(state, vocab.index(ch))
    assert automaton.allowed(state)[end]  # "a b" matches: the end may come
    with pytest.raises(PatternError, match="it needs the end character '\\\\n' \\(U\\+000A\\), which never appears"):
        compile_constraint(vocab, regex="a\nb")
    other = compile_constraint(vocab, regex="a\nb", end=" ")  # another end character: the newline is text
    assert other.start != DEAD


def test_choices_are_exactly_the_texts():
    vocab = list("abnowy yes\n")
    automaton = compile_constraint(vocab, choices=["yes", "no", "no way"])
    reached = set()

    def walk(state, text):
        if automaton.accepting(state):
            reached.add(text)
        for i, ok in enumerate(automaton.allowed(state)):
            if ok and vocab[i] != "\n":
                walk(automaton.advance(state, i), text + vocab[i])

    walk(automaton.start, "")
    assert reached == {"yes", "no", "no way"}


BAD = [
    ({"regex": "(a"}, "missing ), unterminated subpattern"),
    ({"regex": "a)"}, "unbalanced parenthesis"),
    ({"regex": "*a"}, "nothing to repeat"),
    ({"regex": "a**"}, "multiple repeat"),
    ({"regex": "(a)\\1"}, "backreferences (\\1) are outside the dialect"),
    ({"regex": "(?P<x>a)(?P=x)"}, "backreferences (?P=name) are outside the dialect"),
    ({"regex": "a(?=b)"}, "lookahead (?=...) is outside the dialect"),
    ({"regex": "(?<!a)b"}, "negative lookbehind (?<!...) is outside the dialect"),
    ({"regex": "\\bab"}, "word boundaries (\\b) are outside the dialect"),
    ({"regex": "(?>ab)"}, "atomic groups (?>...) are outside the dialect"),
    ({"regex": "a++"}, "possessive quantifiers"),
    ({"regex": "(?x)a b"}, "the flag 'x' is outside the dialect"),
    ({"regex": "a(?i)b"}, "global flags not at the start of the expression"),
    ({"regex": "[b-a]"}, "bad character range b-a"),
    ({"regex": "a{3,2}"}, "min repeat greater than max repeat"),
    ({"regex": "a{5000}"}, "over the dialect's limit of 1000"),
    ({"regex": "\\q"}, "bad escape \\q"),
    ({"regex": "[ab"}, "unterminated character set"),
    ({"regex": "a^b"}, "^ and \\A are allowed only at the start"),
    ({"regex": "a$b"}, "$ and \\Z are allowed only at the end"),
    ({"regex": "ж+"}, "no text over the model's 5 characters matches the pattern: it needs 'ж' (U+0436)"),
    ({"regex": "[0-9]"}, "it needs '[0-9]'"),
    ({"regex": "(a|b){1000}(a|b){1000}(a|b){1000}" * 40}, "the pattern is too large"),
    ({"choices": []}, "choices must be a non-empty list of strings"),
    ({"choices": ["ab", "aж"]}, "the choice 'aж' has characters the model does not know: 'ж' (U+0436)"),
    ({"choices": ["a\nb"]}, "holds the end character '\\n' (U+000A)"),
    ({"regex": "a", "end": "ab"}, "the end must be one character"),
]


@pytest.mark.parametrize("given, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_constraints_are_one_line(given, message):
    with pytest.raises(PatternError) as caught:
        compile_constraint(list("ab \n."), **given)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def node() -> str:
    found = shutil.which("node")
    if found is None or not (ROOT / "serve" / "js" / "node_modules").is_dir():
        pytest.skip("no Node.js, or its packages are not installed (./setup.sh)")
    return found


def test_javascript_masks_and_errors_equal_python(tmp_path):
    """The same 300 generated patterns, the bad ones and a few choice lists: the JavaScript core gives the same
    mask at every step of the same walks, and refuses what Python refuses."""
    rng = random.Random(2)
    vocab = VOCAB + ["\n"]
    cases = []
    for pattern in patterns(300, seed=3) + [given["regex"] for given, _ in BAD if "regex" in given]:
        try:
            automaton = compile_constraint(vocab, regex=pattern)
        except PatternError as e:
            cases.append({"regex": pattern, "walk": [], "error": str(e)})
            continue
        cases.append({"regex": pattern, "walk": random_walks(automaton, rng, 10, vocab.index("\n"))})
    for choices in (["ab", "b0"], ["a", "ab", "abA"], ["é", ""]):
        automaton = compile_constraint(vocab, choices=choices)
        cases.append({"choices": choices, "walk": random_walks(automaton, rng, 5, vocab.index("\n"))})
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"vocab": vocab, "end": "\n", "cases": cases}), encoding="utf-8")
    script = ROOT / "tests" / "constrain_masks.mjs"
    result = subprocess.run([node(), str(script), "walks", str(path)], capture_output=True, text=True, check=True)
    answers = json.loads(result.stdout)
    for case, answer in zip(cases, answers, strict=True):
        if "error" in case:
            assert answer.get("kind") == "PatternError", (case, answer)
            assert answer["error"].split(":")[-1] == case["error"].split(":")[-1], (case, answer)
            continue
        automaton = compile_constraint(vocab, regex=case.get("regex"), choices=case.get("choices"))
        state, masks = automaton.start, []
        for token in case["walk"] + [None]:
            masks.append("".join(str(int(b)) for b in automaton.allowed(state)))
            if token is not None:
                state = automaton.advance(state, token)
        assert answer == {"masks": masks}, case


def test_javascript_character_rules_equal_python_over_unicode():
    """\\d, \\w, \\s and the case variants decided alike over every code point this Python's Unicode database
    assigns (a newer Unicode in Node may assign more: those are not compared)."""
    script = ROOT / "tests" / "constrain_masks.mjs"
    result = subprocess.run(
        [node(), str(script), "classes", "0", str(sys.maxunicode + 1)], capture_output=True, text=True, check=True
    )
    answer = json.loads(result.stdout)
    assigned = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    for name, test in CLASSES.items():
        theirs = set(answer["classes"][name])
        for cp in assigned:
            assert test(chr(cp)) == (cp in theirs), (name, hex(cp))
    for cp in assigned:
        ours = [ord(v) for v in case_variants(chr(cp))[1:]]
        theirs = answer["variants"].get(str(cp), [])
        if ours != theirs and all(unicodedata.category(chr(v)) != "Cn" for v in theirs + ours):
            raise AssertionError((hex(cp), ours, theirs))
