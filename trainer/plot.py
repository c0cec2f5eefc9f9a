"""loss.png: the training and validation losses of a run, from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(e["step"], e[key]) for e in events if key in e]
        if points:
            ax.plot(*zip(*points), style, label=label, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
