"""Each training safeguard and option against what it means, on real steps and real draws: clipping, weight decay
on matrices only, the learning-rate schedule, dropout on in training and off elsewhere, the rates of state resets
and input noise, AR and TAR as their formulas say. (The non-finite skip and the int8 limit have their tests in
test_train.py and test_export.py; every test here has failed for its planted bug: tests/MUTATIONS.md.)"""

from __future__ import annotations

import math
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import EMPTY_CONFIG, TINY

from trainer.build import make_optimizer
from trainer.config import load_config
from trainer.evaluate import evaluate_loss, sample_text
from trainer.model import CharLSTM
from trainer.regularize import activation_penalty, dropout_masks, noisy_inputs, state_resets
from trainer.run import Run
from trainer.step import agree, compute_gradients, lr_at
from trainer.stopping import Budget, StopFlags


def config(*overrides: str):
    return load_config(EMPTY_CONFIG, [*TINY, *overrides])


def start(corpus, tmp_path, *overrides: str) -> Run:
    return Run.start(config(f"data.path={corpus}", f"out_dir={tmp_path / 'run'}", *overrides))


def gradients(run: Run) -> torch.Tensor:
    """compute_gradients on the run's parts and its train state."""
    window = run.feeder.window(run.state.step)
    return compute_gradients(
        run.state,
        window,
        cfg=run.cfg,
        model=run.model,
        accelerator=run.accelerator,
        start=run.stream_start,
        stop=run.stream_stop,
    )


def clip_and_agree(run: Run, loss: torch.Tensor) -> None:
    """agree (which clips the gradients) on the run's parts, with no signal and a fresh budget."""
    budget = Budget(run.cfg, run.accelerator, run.log, run.say)
    agree(
        loss,
        StopFlags(),
        budget,
        run.state,
        cfg=run.cfg,
        model=run.model,
        accelerator=run.accelerator,
        precision_mode=run.precision.mode,
    )


def grad_norm(run: Run) -> float:
    return torch.cat([p.grad.flatten() for p in run.unwrapped.parameters() if p.grad is not None]).norm().item()


def test_gradient_clipping_leaves_the_optimizer_gradients_of_norm_grad_clip(corpus_100k, tmp_path):
    """A real step whose global gradient norm exceeds train.grad_clip: the update sees gradients of norm grad_clip
    exactly (and in the same direction); below the limit, or with grad_clip=0, they are left as they are."""
    run = start(corpus_100k, tmp_path, "train.grad_clip=0.05")
    loss = gradients(run)
    raw = [p.grad.clone() for p in run.unwrapped.parameters()]
    raw_norm = grad_norm(run)
    assert raw_norm > 4 * 0.05  # the first step of a fresh model: far above the limit
    clip_and_agree(run, loss)
    assert grad_norm(run) == pytest.approx(0.05, rel=1e-4)
    for before, p in zip(raw, run.unwrapped.parameters()):  # scaled, not changed in direction
        torch.testing.assert_close(p.grad, before * (0.05 / raw_norm), rtol=1e-4, atol=1e-9)
    for limit in ("1000", "0"):  # above the norm, and off
        run = start(corpus_100k, tmp_path / limit, f"train.grad_clip={limit}")
        loss = gradients(run)
        clip_and_agree(run, loss)
        assert grad_norm(run) == pytest.approx(raw_norm, rel=1e-5)


def test_weight_decay_acts_on_the_matrices_only(corpus_100k, tmp_path):
    """AdamW's decoupled decay, one step with zero gradients (so Adam itself moves nothing): the LSTM and head
    matrices shrink by lr x weight_decay; the biases and the embedding do not move."""
    cfg = config(f"data.path={corpus_100k}", "train.weight_decay=0.5", "train.lr=0.01")
    torch.manual_seed(0)
    model = CharLSTM(30, 8, 16, 2, 0.0)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    matrices = {"lstms.0.weight_ih_l0", "lstms.0.weight_hh_l0", "lstms.1.weight_ih_l0", "lstms.1.weight_hh_l0"}
    for name, p in model.named_parameters():
        shrunk = name in matrices | {"head.weight"}
        torch.testing.assert_close(p.detach(), before[name] * (1 - 0.01 * 0.5 if shrunk else 1.0), rtol=0, atol=1e-7)


def test_the_learning_rate_schedule_has_its_documented_shape():
    """Linear warmup to train.lr, cosine to train.min_lr at the horizon (max_steps, or decay_steps), flat after;
    at the peak while train.max_steps=auto has no total yet."""
    cfg = config("train.lr=0.01", "train.min_lr=0.001", "train.warmup_steps=10")
    assert [lr_at(s, cfg, 110) for s in (0, 4, 9)] == pytest.approx([0.001, 0.005, 0.01])
    assert lr_at(10, cfg, 110) == pytest.approx(0.01)  # the cosine starts at the peak
    assert lr_at(35, cfg, 110) == pytest.approx(0.001 + 0.009 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(60, cfg, 110) == pytest.approx(0.0055)  # halfway: the mean of peak and floor
    assert lr_at(110, cfg, 110) == pytest.approx(0.001) and lr_at(500, cfg, 110) == pytest.approx(0.001)
    rates = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # never rises after the warmup
    longer = config("train.lr=0.01", "train.min_lr=0.001", "train.warmup_steps=10", "train.decay_steps=210")
    assert lr_at(110, longer, 110) == pytest.approx(0.0055)  # decay_steps is the horizon
    assert lr_at(50, cfg, None) == pytest.approx(0.01)  # auto, before the total is fixed


def test_dropout_is_on_in_training_only(corpus_100k, tmp_path):
    """A training step drops each layer's outputs at the rate model.dropout (keyed masks, the kept ones scaled by
    1/(1-p)), so with 0.5 its loss differs from the same weights without dropout; an evaluation, a sample and
    the single step of sampling and export give exactly what the same weights give without dropout, even left
    in training mode."""
    masks = dropout_masks(config("model.dropout=0.3"), 3, 0, 8, torch.device("cpu"))  # (L, b, T, H), True keeps
    assert abs((~masks).float().mean().item() - 0.3) < binomial_bound(masks.numel(), 0.3)
    dropped = start(corpus_100k, tmp_path, "model.dropout=0.5")
    plain = start(corpus_100k, tmp_path / "plain", "model.dropout=0")
    plain.unwrapped.load_state_dict(dropped.unwrapped.state_dict())
    assert gradients(dropped).item() != gradients(plain).item()
    # the head sees about half of its inputs, doubled: its gradient is far from the one without dropout
    assert not torch.allclose(dropped.unwrapped.head.weight.grad, plain.unwrapped.head.weight.grad, rtol=0.1, atol=0)

    one_process = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext, reduce=lambda t, reduction: t)
    dropped.unwrapped.train()
    plain.unwrapped.train()
    assert evaluate_loss(dropped.unwrapped, dropped.evals, 0, 8, one_process) == evaluate_loss(
        plain.unwrapped, plain.evals, 0, 8, one_process
    )
    t = dropped.cfg.train
    assert sample_text(dropped.unwrapped.train(), dropped.corpus.vocab, "The ", t) == sample_text(
        plain.unwrapped.train(), plain.corpus.vocab, "The ", t
    )
    tokens = torch.tensor([3, 7, 1])
    h, c = dropped.unwrapped.zero_state(3)
    for model in (dropped.unwrapped.train(), plain.unwrapped.eval()):  # the step that export traces and sampling runs
        logits, _, _ = model.step(tokens, h, c)
        torch.testing.assert_close(logits, plain.unwrapped.eval().step(tokens, h, c)[0], rtol=0, atol=0)


def binomial_bound(n: int, p: float) -> float:
    """Six standard deviations of a rate measured over n draws of probability p."""
    return 6 * math.sqrt(p * (1 - p) / n)


def test_state_resets_and_input_noise_happen_at_their_rates():
    """train.state_reset: each stream starts a window from a zero state with its probability; train.input_noise:
    each input character is replaced by one drawn uniformly (so p x (V-1)/V of them change)."""
    cfg = config("train.state_reset=0.2", "train.input_noise=0.1")
    resets = torch.stack([state_resets(cfg, step, 0, 16) for step in range(600)]).float()  # (600, 16)
    assert abs(resets.mean().item() - 0.2) < binomial_bound(resets.numel(), 0.2)
    assert 0.1 < resets.mean(dim=0).min().item() and resets.mean(dim=0).max().item() < 0.3  # every stream
    vocab = 40
    x = torch.randint(0, vocab, (16, 32), generator=torch.Generator().manual_seed(0))
    changed = torch.stack([noisy_inputs(cfg, step, 0, x, vocab) != x for step in range(200)]).float()
    rate = 0.1 * (vocab - 1) / vocab
    assert abs(changed.mean().item() - rate) < binomial_bound(changed.numel(), rate)
    assert noisy_inputs(config("train.input_noise=0"), 5, 0, x, vocab) is x  # off: untouched


def test_activation_penalties_are_their_formulas():
    """AR = activation_reg x mean(h^2) and TAR = temporal_reg x mean((h_t - h_(t-1))^2) of the last layer's output,
    summed; each alone when the other is 0."""
    top = torch.randn(4, 9, 6, generator=torch.Generator().manual_seed(1))  # (b, T, H)
    h = top.double().numpy()
    ar, tar = np.mean(h**2), np.mean((h[:, 1:] - h[:, :-1]) ** 2)
    both = activation_penalty(config("train.activation_reg=2", "train.temporal_reg=3"), top)
    assert both.item() == pytest.approx(2 * ar + 3 * tar, rel=1e-5)
    assert activation_penalty(config("train.activation_reg=2", "train.temporal_reg=0"), top).item() == pytest.approx(
        2 * ar, rel=1e-5
    )
    assert activation_penalty(config("train.activation_reg=0", "train.temporal_reg=3"), top).item() == pytest.approx(
        3 * tar, rel=1e-5
    )
