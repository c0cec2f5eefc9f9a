"""Pearson's r between every cell's activation and every feature, from sums streamed a chunk of steps at a time:
memory holds the sums, (features, cells), never the activations of the whole text."""

from __future__ import annotations

import numpy as np


class Correlations:
    """Sums over positions of a (cells,) activation and a (features,) value. Both are shifted by their first
    chunk's mean before they are summed, so n * sum(xy) - sum(x) * sum(y) does not lose its digits to
    cancellation on a long text."""

    def __init__(self):
        self.n = 0

    def update(self, acts: np.ndarray, feats: np.ndarray) -> None:
        """acts (T, C) and feats (T, F) of the same T positions."""
        if self.n == 0:
            self.shift_a, self.shift_f = acts.mean(axis=0), feats.mean(axis=0)
            self.sa, self.saa = np.zeros(acts.shape[1]), np.zeros(acts.shape[1])
            self.sf, self.sff = np.zeros(feats.shape[1]), np.zeros(feats.shape[1])
            self.saf = np.zeros((feats.shape[1], acts.shape[1]))  # (F, C)
            self.min_a, self.max_a = acts.min(axis=0), acts.max(axis=0)
            self.min_f, self.max_f = feats.min(axis=0), feats.max(axis=0)
        a, f = acts - self.shift_a, feats - self.shift_f
        self.n += len(a)
        self.sa += a.sum(axis=0)
        self.saa += (a * a).sum(axis=0)
        self.sf += f.sum(axis=0)
        self.sff += (f * f).sum(axis=0)
        self.saf += f.T @ a
        self.min_a, self.max_a = np.minimum(self.min_a, acts.min(axis=0)), np.maximum(self.max_a, acts.max(axis=0))
        self.min_f, self.max_f = np.minimum(self.min_f, feats.min(axis=0)), np.maximum(self.max_f, feats.max(axis=0))

    def r(self) -> np.ndarray:
        """(F, C) Pearson's r; NaN where the feature or the activation is constant over the text."""
        n = self.n
        cov = n * self.saf - self.sf[:, None] * self.sa[None, :]
        var_a = np.maximum(n * self.saa - self.sa**2, 0.0)
        var_f = np.maximum(n * self.sff - self.sf**2, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(var_f[:, None] * var_a[None, :])
        constant = (self.max_f == self.min_f)[:, None] | (self.max_a == self.min_a)[None, :]
        return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def ranked(r: np.ndarray, names: list[str], layers: int, hidden: int) -> dict[str, list[dict]]:
    """{feature: [{layer, unit, kind, r}, ...]} best |r| first (ties: c before h, lower layer, lower unit),
    r None where it is undefined (last). Cells are numbered kind-major: c of every layer, then h."""
    cells = [(kind, layer, unit) for kind in ("c", "h") for layer in range(layers) for unit in range(hidden)]
    out = {}
    for f, name in enumerate(names):
        row = r[f]
        order = np.lexsort((np.arange(len(row)), -np.nan_to_num(np.abs(row), nan=-1.0)))
        out[name] = [
            {
                "layer": cells[j][1],
                "unit": cells[j][2],
                "kind": cells[j][0],
                "r": None if np.isnan(row[j]) else round(float(row[j]), 6),
            }
            for j in order
        ]
    return out
