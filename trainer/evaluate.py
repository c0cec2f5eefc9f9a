"""Evaluation: the validation loss on a bounded part of the split, and the sample taken at each evaluation.

The loss reads the validation split as the B streams of `EvalStreams` (trainer/data/streams.py), each cut to
train.eval_chars // B characters: the same part at every evaluation, sharded over the processes by stream and
summed, so N processes report what one reports and the cost stays flat however large the corpus grows.
serve.score reads a text the same way (--max-chars), so the two agree on the same part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.data import Corpus, EvalStreams
from trainer.dist.peer_faults import check_peers
from trainer.errors import UserError
from trainer.model import CharLSTM


def evaluate_loss(model: CharLSTM, evals: EvalStreams, start: int, stop: int, accelerator) -> tuple[float, int]:
    """(loss in nats/char, characters scored) over evals' part of the validation split: this process scores
    streams [start, stop), the sums are reduced over all processes. Collective."""
    model.eval()
    device = accelerator.device
    h, c = model.zero_state(stop - start, device)  # (L, b, H)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, count)
    with torch.no_grad(), accelerator.autocast():
        for x, y in evals.windows(start, stop):  # (b, t) each
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            logits, (h, c) = model(x, (h, c))  # (b, t, V)
            total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            total[1] += y.numel()
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1]).item(), int(total[1].item())


def choose_prime(prime: str | None, corpus: Corpus, val_ids) -> str:
    """train.sample_prime (every character in the vocabulary), else the validation split's first line."""
    if prime is None:
        head = corpus.decode(val_ids[:200])
        return head[: head.index("\n") + 1] if "\n" in head else head[:40]
    missing = sorted(set(prime) - set(corpus.vocab))
    if missing:
        raise UserError(f"train.sample_prime has characters the corpus lacks: {', '.join(map(repr, missing))}")
    return prime or "\n"


@torch.no_grad()
def sample_text(model: CharLSTM, vocab: list[str], prime: str, t) -> str | None:
    """t.sample_chars characters after `prime`, top-k 5, from a generator of its own (seeded by train.seed): the
    training's draws are keyed elsewhere, so sampling changes nothing in the run. None when the model's
    predictions are not finite: there is no distribution to draw from (`prediction_fault` says so)."""
    was_training = model.training
    model.eval()
    try:
        return _draw(model, vocab, prime, t)
    finally:
        model.train(was_training)


def _draw(model: CharLSTM, vocab: list[str], prime: str, t) -> str | None:
    index = {ch: i for i, ch in enumerate(vocab)}
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(t.seed)
    h, c = model.zero_state(1, device)
    for ch in prime:
        logits, h, c = model.step(torch.tensor([index[ch]], device=device), h, c)
    out = []
    for _ in range(t.sample_chars):
        top, ids = logits.float().topk(min(5, len(vocab)), dim=-1)  # (1, 5)
        # Weights grown huge (a diverged run) overflow the written-out cell to inf and NaN, even where the
        # fused kernels of the validation loss still return finite numbers. This read of the device costs
        # nothing new: int(pick) below reads it for every character anyway.
        if not torch.isfinite(top).all():
            return None
        pick = ids[0, torch.multinomial(torch.softmax(top[0], dim=-1), 1, generator=generator)]
        out.append(vocab[int(pick)])
        logits, h, c = model.step(pick, h, c)
    return "".join(out)


def prediction_fault(val: float, sample: str | None, accelerator, sampled: bool) -> str | None:
    """What is not finite in an evaluation's predictions, or None: the validation loss (already the same on
    every process: it was reduced), or the sample (None, drawn on the main process only). `sampled`: whether
    the main process drew one (train.sample_chars > 0), the same on every process. Then, on several processes,
    the main process's verdict is shared by one all-reduce, so that all end the run together instead of the
    others waiting for it in their next collective. Collective when sampled on several processes."""
    failed = sample is None
    if sampled and accelerator.num_processes > 1:
        flag = torch.tensor([float(failed)], device=accelerator.device)
        failed = accelerator.reduce(flag, reduction="sum").item() > 0
        check_peers(accelerator)  # a verdict read from an all-reduce that NCCL aborted is garbage
    if not math.isfinite(val):
        return f"the validation loss is {val}"
    if failed:
        return "the sample met non-finite probabilities"
    return None
