"""Constraints on generated text: a regular expression it matches in full, or a list of choices it is one of.

automaton = compile_constraint(vocab, regex="[A-Z][a-z]{2,11}")
state = automaton.start
mask = automaton.allowed(state)  # (V,) bool: what may come next (the end character where the text matches)
state = automaton.advance(state, token)
"""

from __future__ import annotations

import unicodedata

from serve.constrain.automaton import DEAD, Automaton
from serve.constrain.dialect import PatternError, parse

__all__ = ["DEAD", "Automaton", "PatternError", "compile_constraint"]


def shown(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


def compile_constraint(
    vocab: list[str],
    regex: str | None = None,
    choices: list[str] | tuple[str, ...] | None = None,
    end: str = "\n",
    normalize: str = "none",
) -> Automaton:
    """The automaton of `regex` or `choices` over `vocab`, the text ending at `end` (a character that never
    appears inside it); PatternError (one line) for a pattern outside the dialect, an empty choice list, a
    choice with characters the model lacks, or a constraint no text over the vocabulary can meet."""
    if (regex is None) == (choices is None):
        raise PatternError("give a regex or choices, not both" if regex is not None else "no constraint given")
    if not isinstance(end, str) or len(end) != 1:
        raise PatternError(f"the end must be one character, got {end!r}")

    def form(text: str) -> str:
        return text if normalize == "none" else unicodedata.normalize(normalize, text)

    index = {ch: i for i, ch in enumerate(vocab)}
    end = form(end)
    end_id = index.get(end)
    if regex is not None:
        if not isinstance(regex, str):
            raise PatternError(f"the regex must be a string, got {type(regex).__name__}")
        tree = parse(form(regex), vocab, end_id)
        what = "the pattern"
    else:
        tree = choices_tree(choices, index, end, form)
        what = "the choices"
    automaton = Automaton(tree, len(vocab), end_id)
    if automaton.start == DEAD:
        raise PatternError(f"no text over the model's {len(vocab)} characters matches {what}{needed(tree, end)}")
    return automaton


def choices_tree(choices, index: dict[str, int], end: str, form) -> tuple:
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or not choices:
        raise PatternError("choices must be a non-empty list of strings")
    branches = []
    for choice in choices:
        if not isinstance(choice, str):
            raise PatternError(f"each choice must be a string, got {choice!r}")
        text = form(choice)
        if end in text:
            raise PatternError(f"the choice {choice!r} holds the end character {shown(end)}, which ends a text")
        missing = sorted({ch for ch in text if ch not in index})
        if missing:
            raise PatternError(
                f"the choice {choice!r} has characters the model does not know: {', '.join(map(shown, missing))}"
            )
        branches.append(("cat", [("set", 1 << index[ch], ch) for ch in text]))
    return ("alt", branches)


def needed(tree: tuple, end: str) -> str:
    """What the constraint asks for that no character can be: its sets that hold none (the end character among
    them, which a constrained text never holds)."""
    empty: list[str] = []

    def walk(node: tuple) -> None:
        if node[0] == "set":
            if not node[1] and node[2] not in empty:
                empty.append(node[2])
        elif node[0] in ("cat", "alt"):
            for item in node[1]:
                walk(item)
        else:
            walk(node[1])

    walk(tree)
    lacking = [s for s in empty if s != end]
    parts = []
    if lacking:
        listed = ", ".join(shown(s) if len(s) == 1 else repr(s) for s in lacking[:10])
        parts.append(f"it needs {listed}, which the model's vocabulary lacks")
    if end in empty:
        parts.append(f"it needs the end character {shown(end)}, which never appears inside a text (choose another end)")
    return (": " + "; ".join(parts)) if parts else ""
