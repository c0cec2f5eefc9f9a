"""A constraint compiled over the model's vocabulary: a Thompson automaton of the pattern's tree, over classes of
characters that every set treats alike, made deterministic lazily (a state is met, then its row is built once).

Only live automaton states are kept (those from which a full match can still be reached), so a state's mask
is exactly the characters after which a full match stays possible. serve/js/automaton.js builds the same
automaton in the same order: the masks are a property of the pattern and the vocabulary, not of the runtime.
"""

from __future__ import annotations

import numpy as np

from serve.constrain.dialect import PatternError

MAX_STATES = 200_000  # automaton states a pattern may build (each repetition is a copy of its body)
DEAD = -1


class Automaton:
    """The tree's automaton: start state 0 after build(); per state, its moves on classes and its mask."""

    def __init__(self, tree: tuple, vocab_size: int, end_id: int | None):
        self.vocab_size = vocab_size
        self.end_id = end_id
        leaves: list[int] = []
        collect_leaves(tree, leaves)
        distinct = list(dict.fromkeys(leaves))
        self.class_of, self.class_members = alphabet_classes(distinct, vocab_size)
        self.classes_of_mask = {
            mask: frozenset(k for k, members in enumerate(self.class_members) if mask >> members[0] & 1)
            for mask in distinct
        }
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[frozenset, int]]] = []
        start, self.accept = self.fragment(tree)
        self.live = self.live_states()
        self.members: list[tuple[int, ...]] = []  # per deterministic state: its live automaton states
        self.index: dict[tuple[int, ...], int] = {}
        self.moves = np.zeros((0, len(self.class_members)), dtype=np.int64)  # (S, classes): the next state
        self.masks = np.zeros((0, vocab_size), dtype=bool)  # (S, V)
        self.built = np.zeros(0, dtype=bool)  # (S,): its row is filled in
        self.class_index = np.array(self.class_of, dtype=np.int64)  # (V,)
        self.start = self.state(self.closure([start]))

    # ------------------------------------------------------------ the nondeterministic automaton

    def new_state(self) -> int:
        if len(self.eps) >= MAX_STATES:
            raise PatternError(f"the pattern is too large (over {MAX_STATES:,} automaton states): lower its counts")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def fragment(self, tree: tuple) -> tuple[int, int]:
        """States (entry, exit) that read one text of `tree`."""
        kind = tree[0]
        entry = self.new_state()
        if kind == "set":
            exit_ = self.new_state()
            if tree[1]:
                self.edges[entry].append((self.classes_of_mask[tree[1]], exit_))
            return entry, exit_
        if kind == "cat":
            here = entry
            for item in tree[1]:
                first, last = self.fragment(item)
                self.eps[here].append(first)
                here = last
            return entry, here
        if kind == "alt":
            exit_ = self.new_state()
            for branch in tree[1]:
                first, last = self.fragment(branch)
                self.eps[entry].append(first)
                self.eps[last].append(exit_)
            return entry, exit_
        _, body, low, high = tree
        here = entry
        for _ in range(low):
            first, last = self.fragment(body)
            self.eps[here].append(first)
            here = last
        exit_ = self.new_state()
        if high is None:  # a loop: read the body again and again, or leave
            first, last = self.fragment(body)
            self.eps[here] += [first, exit_]
            self.eps[last].append(here)
            return entry, exit_
        for _ in range(high - low):  # optional copies: each may be the last
            first, last = self.fragment(body)
            self.eps[here] += [exit_, first]
            here = last
        self.eps[here].append(exit_)
        return entry, exit_

    def live_states(self) -> list[bool]:
        """The states from which the exit is reachable: a full match is still possible there."""
        back: list[list[int]] = [[] for _ in self.eps]
        for state, targets in enumerate(self.eps):
            for target in targets:
                back[target].append(state)
        for state, edges in enumerate(self.edges):
            for _, target in edges:
                back[target].append(state)
        live = [False] * len(self.eps)
        live[self.accept] = True
        todo = [self.accept]
        while todo:
            for source in back[todo.pop()]:
                if not live[source]:
                    live[source] = True
                    todo.append(source)
        return live

    def closure(self, states) -> tuple[int, ...]:
        """The live states reachable from `states` without reading a character, sorted."""
        seen = set(states)
        todo = list(states)
        while todo:
            for target in self.eps[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return tuple(sorted(s for s in seen if self.live[s]))

    # ------------------------------------------------------------ the deterministic automaton, built lazily

    def state(self, members: tuple[int, ...]) -> int:
        if not members:
            return DEAD
        found = self.index.get(members)
        if found is None:
            found = self.index[members] = len(self.members)
            self.members.append(members)
            if found == len(self.built):  # room for twice as many states
                grow = max(16, found)
                self.moves = np.concatenate([self.moves, np.zeros((grow, self.moves.shape[1]), dtype=np.int64)])
                self.masks = np.concatenate([self.masks, np.zeros((grow, self.vocab_size), dtype=bool)])
                self.built = np.concatenate([self.built, np.zeros(grow, dtype=bool)])
        return found

    def build(self, state: int) -> None:
        """A state's row: its next state for each class, and its mask over the vocabulary."""
        members = self.members[state]
        for k in range(len(self.class_members)):
            targets = [t for s in members for classes, t in self.edges[s] if k in classes]
            self.moves[state, k] = target = self.state(self.closure(targets))
            if target != DEAD:
                self.masks[state, self.class_members[k]] = True
        if self.end_id is not None and self.accept in members:
            self.masks[state, self.end_id] = True
        self.built[state] = True

    def allowed(self, state: int) -> np.ndarray:
        """(V,) bool: the characters that keep a full match possible, and the end where the text is one."""
        if not self.built[state]:
            self.build(state)
        return self.masks[state]

    def advance(self, state: int, token: int) -> int:
        """The state after `token` (not the end character); DEAD if no full match stays possible."""
        if not self.built[state]:
            self.build(state)
        return int(self.moves[state, self.class_of[token]])

    def allowed_rows(self, states: np.ndarray) -> np.ndarray:
        """(n,) states -> (n, V) bool, a new array: allowed() of each."""
        pending = states[~self.built[states]]
        for state in np.unique(pending).tolist() if len(pending) else ():
            self.build(state)
        return self.masks[states]

    def advance_rows(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(n,) states (each built, as allowed_rows leaves them) and tokens -> (n,) next states."""
        return self.moves[states, self.class_index[tokens]]

    def accepting(self, state: int) -> bool:
        return self.accept in self.members[state]


def collect_leaves(tree: tuple, out: list[int]) -> None:
    if tree[0] == "set":
        out.append(tree[1])
    elif tree[0] in ("cat", "alt"):
        for item in tree[1]:
            collect_leaves(item, out)
    else:
        collect_leaves(tree[1], out)


def alphabet_classes(masks: list[int], vocab_size: int) -> tuple[list[int], list[list[int]]]:
    """Vocabulary ids grouped by which sets hold them: (class of each id, the ids of each class), classes
    numbered in the order of their smallest id."""
    class_of, members, seen = [], [], {}
    for i in range(vocab_size):
        signature = tuple(mask >> i & 1 for mask in masks)
        k = seen.setdefault(signature, len(seen))
        if k == len(members):
            members.append([])
        members[k].append(i)
        class_of.append(k)
    return class_of, members
