"""The regular-expression dialect of constraints: a pattern -> a tree whose leaves are sets of vocabulary ids.

The dialect is Python's `re` syntax less what a finite automaton cannot do exactly: backreferences,
lookarounds, word boundaries, atomic groups, possessive quantifiers and conditionals are refused by name
(docs/constrained.md). What escapes and classes stand for is in charsets.py; serve/js/dialect.js is this
parser in JavaScript, method for method.

A tree is ("set", mask, source) with mask an int whose bit i is vocabulary id i, ("cat", [trees]),
("alt", [trees]) or ("rep", tree, low, high) with high None for no bound. The end character is in no set:
it never appears inside a constrained text.
"""

from __future__ import annotations

from serve.constrain.charsets import (
    CLASSES,
    COUNTS,
    MAX_REPEAT,
    REFUSED_ESCAPES,
    REFUSED_GROUPS,
    SIMPLE_ESCAPES,
    case_variants,
)
from serve.errors import SamplerError


class PatternError(SamplerError):
    """A pattern outside the dialect, or one that the model's vocabulary cannot match."""


class Parser:
    """Recursive descent over the pattern's code points, with the flags in force (i, s) scoped by groups."""

    def __init__(self, pattern: str, vocab: list[str], end_id: int | None):
        self.chars = list(pattern)
        self.pos = 0
        self.vocab = vocab
        self.allowed = ((1 << len(vocab)) - 1) & ~((1 << end_id) if end_id is not None else 0)
        self.ignore_case = False
        self.dot_all = False

    def error(self, message: str, at: int | None = None) -> PatternError:
        where = self.pos if at is None else at
        return PatternError(f"bad pattern {''.join(self.chars)!r} at position {where}: {message}")

    def peek(self, offset: int = 0) -> str | None:
        i = self.pos + offset
        return self.chars[i] if i < len(self.chars) else None

    def take(self) -> str:
        ch = self.peek()
        if ch is None:
            raise self.error("unexpected end of pattern")
        self.pos += 1
        return ch

    # ------------------------------------------------------------ sets over the vocabulary

    def mask(self, test, negate: bool = False) -> int:
        """The vocabulary ids whose character passes `test` (case variants under (?i)), or fails it."""
        bits = 0
        for i, ch in enumerate(self.vocab):
            hit = any(test(v) for v in case_variants(ch)) if self.ignore_case else test(ch)
            if hit != negate:
                bits |= 1 << i
        return bits & self.allowed

    def leaf(self, test, source: str, negate: bool = False) -> tuple:
        return ("set", self.mask(test, negate), source)

    # ------------------------------------------------------------ the grammar

    def parse(self) -> tuple:
        self.global_flags()
        tree = self.alternation(top=True)
        if self.peek() == ")":
            raise self.error("unbalanced parenthesis")
        return tree

    def global_flags(self) -> None:
        while self.chars[self.pos : self.pos + 2] == ["(", "?"] and self.peek(2) in tuple("isamuxL"):
            start, self.pos = self.pos, self.pos + 2
            flags = ""
            while self.peek() not in (")", ":", None):
                flags += self.take()
            if self.peek() != ")":
                self.pos = start
                return
            self.pos += 1
            self.set_flags(flags, start)

    def set_flags(self, flags: str, at: int) -> None:
        for flag in flags:
            if flag == "i":
                self.ignore_case = True
            elif flag == "s":
                self.dot_all = True
            elif flag not in "mu":  # (?m) changes only ^ and $, which stand at the ends here; (?u) is the default
                raise self.error(f"the flag {flag!r} is outside the dialect (it has i, s, m and u)", at)

    def alternation(self, top: bool = False) -> tuple:
        branches = [self.sequence(top)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(top))
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self, top: bool) -> tuple:
        """One branch. At the top level it may start with ^ or \\A and end with $ or \\Z: the text matches in
        full anyway, so they mean nothing more; anywhere else they are refused."""
        if top and (self.peek() == "^" or self.chars[self.pos : self.pos + 2] == ["\\", "A"]):
            self.pos += 1 if self.peek() == "^" else 2
        items = []
        while self.peek() not in (None, "|", ")"):
            if self.peek() == "$" or self.chars[self.pos : self.pos + 2] == ["\\", "Z"]:
                at = self.pos
                self.pos += 1 if self.peek() == "$" else 2
                if not (top and self.peek() in (None, "|")):
                    raise self.error("$ and \\Z are allowed only at the end of a top-level branch", at)
                break
            items.append(self.quantified(self.atom()))
        return items[0] if len(items) == 1 else ("cat", items)

    def quantified(self, atom: tuple) -> tuple:
        counts = self.quantifier()
        if counts is None:
            return atom
        if self.peek() == "?":
            self.pos += 1  # lazy: the same texts match in full
        elif self.peek() == "+":
            raise self.error("possessive quantifiers (*+, ++, ?+) are outside the dialect")
        if self.quantifier(peek_only=True):
            raise self.error("multiple repeat")
        return ("rep", atom, counts[0], counts[1])

    def quantifier(self, peek_only: bool = False) -> tuple[int, int | None] | None:
        """The counts of a quantifier here ({} and {x} are literal text, as in Python), moving past it."""
        ch = self.peek()
        simple = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        if ch in simple:
            self.pos += 0 if peek_only else 1
            return simple[ch]
        found = COUNTS.match("".join(self.chars[self.pos : self.pos + 64]))
        if ch != "{" or found is None or not (found[1] or found[2]):
            return None
        low = int(found[1]) if found[1] else 0
        high = (int(found[3]) if found[3] else None) if found[2] else low
        if peek_only:
            return low, high
        for count in (low, high):
            if count is not None and count > MAX_REPEAT:
                raise self.error(f"the count {count} is over the dialect's limit of {MAX_REPEAT}")
        if high is not None and high < low:
            raise self.error(f"min repeat greater than max repeat ({low} > {high})")
        self.pos += len(found[0])
        return low, high

    def atom(self) -> tuple:
        start = self.pos
        ch = self.take()
        if ch == "(":
            return self.group(start)
        if ch == "[":
            return self.char_class(start)
        if ch == ".":
            return self.leaf(lambda c: self.dot_all or c != "\n", ".")
        if ch == "\\":
            return self.escape_atom(start)
        if ch in "*+?" or (ch == "{" and self.back_is_quantifier()):
            raise self.error("nothing to repeat", start)
        if ch == "^":
            raise self.error("^ and \\A are allowed only at the start of a top-level branch", start)
        return self.literal(ch)

    def back_is_quantifier(self) -> bool:
        self.pos -= 1
        found = self.quantifier(peek_only=True) is not None
        self.pos += 1
        return found

    def literal(self, ch: str) -> tuple:
        return self.leaf(lambda c: c == ch, ch)

    def group(self, start: int) -> tuple:
        saved = (self.ignore_case, self.dot_all)
        if self.peek() == "?":
            self.pos += 1
            self.extension(start)
            if self.chars[self.pos - 1] == ")":  # a comment
                return ("cat", [])
        tree = self.alternation()
        if self.peek() != ")":
            raise self.error("missing ), unterminated subpattern", start)
        self.pos += 1
        self.ignore_case, self.dot_all = saved
        return tree

    def extension(self, start: int) -> None:
        """What follows "(?": a non-capturing or named group, a comment, scoped flags; the rest refused."""
        ch = self.take()
        if ch == ":":
            return
        if ch == "P" and self.peek() == "<":
            self.pos += 1
            while self.take() != ">":
                pass
            return
        if ch == "#":
            while self.take() != ")":
                pass
            return
        if ch in "imsux-" or ch == "L":
            self.pos -= 1
            on = ""
            while self.peek() is not None and self.peek() in "imsuxaL":
                on += self.take()
            off = ""
            if self.peek() == "-":
                self.pos += 1
                while self.peek() is not None and self.peek() in "imsuxaL":
                    off += self.take()
            if self.peek() == ")":
                raise self.error("global flags not at the start of the expression", start)
            if self.take() != ":":
                raise self.error("unknown flag", start)
            self.set_flags(on, start)
            if "i" in off:
                self.ignore_case = False
            if "s" in off:
                self.dot_all = False
            return
        two = ch + (self.peek() or "")
        raise self.error(REFUSED_GROUPS.get(two) or REFUSED_GROUPS.get(ch) or f"unknown extension ?{ch}", start)

    # ------------------------------------------------------------ escapes and classes

    def escape_char(self, in_class: bool) -> str | tuple:
        """The character an escape stands for, or ("class", letter) for \\d \\w \\s and their negations."""
        at = self.pos - 1
        ch = self.take()
        if ch in "dwsDWS":
            return ("class", ch)
        if in_class and ch == "b":
            return "\b"
        if ch in SIMPLE_ESCAPES:
            if ch == "0" and self.peek() is not None and self.peek() in "01234567":
                raise self.error("octal escapes are outside the dialect (write \\xhh)", at)
            return SIMPLE_ESCAPES[ch]
        if ch in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[ch]
            digits = "".join(self.chars[self.pos : self.pos + size])
            if len(digits) < size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"incomplete escape \\{ch}{digits}", at)
            self.pos += size
            if int(digits, 16) > 0x10FFFF:
                raise self.error(f"bad escape \\{ch}{digits}", at)
            return chr(int(digits, 16))
        if ch.isdigit():
            raise self.error(f"backreferences (\\{ch}) are outside the dialect", at)
        if ch in REFUSED_ESCAPES:
            raise self.error(REFUSED_ESCAPES[ch], at)
        if ch.isascii() and ch.isalpha():
            raise self.error(f"bad escape \\{ch}", at)
        return ch

    def escape_atom(self, start: int) -> tuple:
        if self.peek() == "A":
            raise self.error("^ and \\A are allowed only at the start of a top-level branch", start)
        ch = self.escape_char(in_class=False)
        if isinstance(ch, tuple):
            letter = ch[1]
            return self.leaf(CLASSES[letter.lower()], "\\" + letter, negate=letter.isupper())
        return self.literal(ch)

    def char_class(self, start: int) -> tuple:
        negate = self.peek() == "^"
        self.pos += negate
        tests = []
        first = True
        while True:
            if self.peek() is None:
                raise self.error("unterminated character set", start)
            if self.peek() == "]" and not first:
                self.pos += 1
                break
            first = False
            low = self.class_item()
            if self.peek() == "-" and self.peek(1) not in ("]", None):
                self.pos += 1
                high = self.class_item()
                if isinstance(low, tuple) or isinstance(high, tuple):
                    raise self.error("bad character range", start)
                if ord(low) > ord(high):
                    raise self.error(f"bad character range {low}-{high}", start)
                tests.append(lambda c, lo=low, hi=high: lo <= c <= hi)
            elif isinstance(low, tuple):
                test = CLASSES[low[1].lower()]
                tests.append(test if low[1].islower() else (lambda c, t=test: not t(c)))
            else:
                tests.append(lambda c, ch=low: c == ch)
        source = "".join(self.chars[start : self.pos])
        return self.leaf(lambda c: any(test(c) for test in tests), source, negate)

    def class_item(self) -> str | tuple:
        ch = self.take()
        return self.escape_char(in_class=True) if ch == "\\" else ch


def parse(pattern: str, vocab: list[str], end_id: int | None) -> tuple:
    """The pattern's tree over the vocabulary (the end character in no set); PatternError if outside the dialect."""
    return Parser(pattern, vocab, end_id).parse()
