"""Features of a text, one value per character, that a cell may track (Karpathy et al. 2015, Visualizing and
Understanding Recurrent Networks): each is the state of the text *after* its character, as the cell's activation
is the state after the step that read it. serve/js/inspect.js computes the same built-in features, rule for rule.

- quotes: the opening quote is inside, the closing one is not (the cell flips on reading either);
- single quotes: a ' between two letters or digits is an apostrophe (don't), not a quote; an unclosed ' ends at
  the end of its line (prose has many elisions: 'tis, o' the);
- bracket depth: (, [ and { open, ), ] and } close (never below 0); the opener is inside, the closer is not;
- characters since the last newline (0 on the newline), indentation of the line the character is on (spaces
  and tabs that start it; the newline belongs to the line it ends);
- position in a word: 1, 2, 3... along a run of letters, digits, _ and apostrophes, 0 elsewhere;
- comment: from # to the end of its line (the newline excluded).
"""

from __future__ import annotations

import re

import numpy as np

BUILTIN = (
    "inside double quotes",
    "inside single quotes",
    "bracket depth",
    "position in line",
    "indentation",
    "position in word",
    "inside comment",
)
OPEN, CLOSE = "([{", ")]}"


class FeatureError(ValueError):
    """A bad --feature; the CLI prints it as one line."""


def word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def builtin_features(text: str) -> dict[str, np.ndarray]:
    """Each built-in feature of `text`, as an (n,) float64 array."""
    n = len(text)
    values = {name: np.zeros(n) for name in BUILTIN}
    double = single = comment = False
    depth = column = word = 0
    line_start = 0
    for t, ch in enumerate(text):
        before = text[t - 1] if t > 0 else ""
        after = text[t + 1] if t + 1 < n else ""
        apostrophe = ch == "'" and word_char(before) and word_char(after)
        if ch == '"':
            double = not double
        elif ch == "'" and not apostrophe:
            single = not single
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth = max(depth - 1, 0)
        comment = comment or ch == "#"
        if ch == "\n":
            single = comment = False
        column = 0 if ch == "\n" else t - line_start + 1
        word = word + 1 if word_char(ch) or apostrophe else 0
        values["inside double quotes"][t] = double
        values["inside single quotes"][t] = single
        values["bracket depth"][t] = depth
        values["position in line"][t] = column
        values["position in word"][t] = word
        values["inside comment"][t] = comment
        if ch == "\n":
            line_start = t + 1
    values["indentation"] = indentation(text)
    return values


def indentation(text: str) -> np.ndarray:
    """(n,) the number of spaces and tabs that start the line each character is on."""
    out = np.zeros(len(text))
    start = 0
    for line in re.split(r"(?<=\n)", text):  # lines end at \n only, as in serve/js/inspect.js
        out[start : start + len(line)] = len(line) - len(line.lstrip(" \t"))
        start += len(line)
    return out


def parse_feature(spec: str) -> tuple[str, re.Pattern]:
    """NAME=REGEX -> (NAME, the compiled REGEX); FeatureError for a bad one."""
    name, sep, pattern = spec.partition("=")
    if not sep or not name.strip() or not pattern:
        raise FeatureError(f"--feature needs NAME=REGEX, got {spec!r}")
    if name.strip() in BUILTIN:
        raise FeatureError(f"--feature {name.strip()!r}: a built-in feature has that name")
    try:
        return name.strip(), re.compile(pattern)
    except re.error as e:
        raise FeatureError(f"--feature {name.strip()}: bad regular expression {pattern!r} ({e})") from None


def regex_feature(text: str, pattern: re.Pattern) -> np.ndarray:
    """(n,) 1 where a match of `pattern` covers the character, else 0 (an empty match covers nothing)."""
    out = np.zeros(len(text))
    for match in pattern.finditer(text):
        out[match.start() : match.end()] = 1
    return out


def all_features(text: str, user: list[tuple[str, re.Pattern]]) -> dict[str, np.ndarray]:
    values = builtin_features(text)
    for name, pattern in user:
        values[name] = regex_feature(text, pattern)
    return values
