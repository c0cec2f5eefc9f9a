"""The characters a pattern's escapes and classes stand for, by rules every runtime applies alike
(serve/js/charsets.js): \\d is Unicode category Nd, \\w the categories L* and N* and "_" (Python's own \\w),
\\s the 29 characters of str.isspace; under (?i) a character also matches when its lowercase or uppercase
(where that is one character) does. And the constructs the dialect refuses, by name."""

from __future__ import annotations

import re
import unicodedata

MAX_REPEAT = 1000  # the largest count in {m,n}: an automaton holds each repetition as states of its own
SPACES = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
COUNTS = re.compile(r"\{([0-9]*)(?:(,)([0-9]*))?\}")  # {m}, {m,}, {,n}, {m,n}
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
REFUSED_ESCAPES = {
    "b": "word boundaries (\\b) are outside the dialect",
    "B": "word boundaries (\\B) are outside the dialect",
    "N": "named characters (\\N{...}) are outside the dialect; write the character or \\uXXXX",
    "z": "\\z is not Python syntax; the whole text must match anyway",
}


def is_word(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in "LN"


CLASSES = {
    "d": lambda ch: unicodedata.category(ch) == "Nd",
    "w": is_word,
    "s": lambda ch: ch in SPACES,
}


def case_variants(ch: str) -> tuple[str, ...]:
    """The character, its lowercase and its uppercase, where each is one character."""
    return (ch,) + tuple(other for other in (ch.lower(), ch.upper()) if len(other) == 1 and other != ch)


REFUSED_GROUPS = {
    "=": "lookahead (?=...) is outside the dialect",
    "!": "negative lookahead (?!...) is outside the dialect",
    "<=": "lookbehind (?<=...) is outside the dialect",
    "<!": "negative lookbehind (?<!...) is outside the dialect",
    "P=": "backreferences (?P=name) are outside the dialect",
    ">": "atomic groups (?>...) are outside the dialect",
    "(": "conditional groups (?(...)...) are outside the dialect",
}
