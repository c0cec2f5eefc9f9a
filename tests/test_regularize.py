"""Everything keyed by (seed, step, stream): the draws depend on nothing else, so N processes equal one and
resume is exact."""

import pytest
import torch

from trainer.config import load_config
from trainer.model import CharLSTM
from trainer.regularize import (
    Purpose,
    WeightAverage,
    activation_penalty,
    dropout_masks,
    noisy_inputs,
    state_resets,
    stream_seed,
    weight_masks,
)


def test_stream_seeds_differ_by_every_key():
    base = stream_seed(1, 2, 3, Purpose.DROPOUT)
    others = [
        stream_seed(2, 2, 3, Purpose.DROPOUT),
        stream_seed(1, 3, 3, Purpose.DROPOUT),
        stream_seed(1, 2, 4, Purpose.DROPOUT),
        stream_seed(1, 2, 3, Purpose.RESET),
        stream_seed(1, 2, 3, Purpose.NOISE),
    ]
    assert len({base, *others}) == 6
    assert stream_seed(1, 2, 3, Purpose.DROPOUT) == base  # a pure function
    assert 0 <= base < 2**63


def test_dropout_masks_depend_on_step_and_stream_only():
    """A stream's mask is the same whichever process (slice of streams) draws it: N processes equal one."""
    for locked in (False, True):
        cfg = load_config(
            None,
            [
                "model.hidden=16",
                "model.layers=2",
                "model.dropout=0.3",
                "train.seq_len=5",
                f"model.locked_dropout={str(locked).lower()}",
            ],
        )
        whole = dropout_masks(cfg, 7, 0, 8, torch.device("cpu"))
        assert whole.shape == (2, 8, 1 if locked else 5, 16) and whole.dtype == torch.bool  # True keeps
        assert torch.equal(dropout_masks(cfg, 7, 2, 5, torch.device("cpu")), whole[:, 2:5])
        assert not torch.equal(dropout_masks(cfg, 8, 0, 8, torch.device("cpu")), whole)  # a new step, new masks
        assert 0.6 < whole.float().mean() < 0.8


def test_dropout_masks_drop_at_the_rate_independently_of_stream_layer_and_position():
    """The hash behind the masks, measured over a million draws: each rate p drops a share p of the units
    (within six standard deviations), and the drops of neighbouring positions, streams, layers and steps are
    uncorrelated (|r| < 0.01, against about 0.001 by chance)."""
    for p in (0.1, 0.5, 0.9):
        cfg = load_config(None, ["model.hidden=128", "model.layers=2", f"model.dropout={p}", "train.seq_len=64"])
        kept = dropout_masks(cfg, 3, 0, 64, torch.device("cpu")).float()  # (2, 64, 64, 128)
        sigma = (p * (1 - p) / kept.numel()) ** 0.5
        assert abs((1 - kept.mean().item()) - p) < 6 * sigma, p
        later = dropout_masks(cfg, 4, 0, 64, torch.device("cpu")).float()
        pairs = {
            "position": (kept[..., :-1], kept[..., 1:]),
            "step in the window": (kept[:, :, :-1], kept[:, :, 1:]),
            "stream": (kept[:, :-1], kept[:, 1:]),
            "layer": (kept[0], kept[1]),
            "training step": (kept, later),
        }
        for name, (a, b) in pairs.items():
            r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
            assert abs(r) < 0.01, (p, name, r)


def test_weight_drop_masks_depend_on_the_step_only():
    cfg = load_config(None, ["model.hidden=16", "model.layers=2", "model.weight_drop=0.25"])
    masks = weight_masks(cfg, 7, torch.device("cpu"))
    assert masks.shape == (2, 64, 16)
    assert torch.equal(weight_masks(cfg, 7, torch.device("cpu")), masks)
    assert not torch.equal(weight_masks(cfg, 8, torch.device("cpu")), masks)
    assert torch.allclose(masks.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert weight_masks(load_config(None, []), 7, torch.device("cpu")) is None  # off by default


def test_state_resets_depend_on_step_and_stream_only():
    cfg = load_config(None, ["train.state_reset=0.25"])
    whole = torch.stack([state_resets(cfg, step, 0, 64) for step in range(50)])  # (steps, streams)
    assert torch.equal(state_resets(cfg, 7, 10, 30), whole[7, 10:30])  # the same whichever process draws it
    assert 0.2 < whole.float().mean() < 0.3
    assert not torch.equal(whole[7], whole[8])
    assert state_resets(load_config(None, ["train.state_reset=0"]), 7, 0, 64) is None


def test_noisy_inputs_depend_on_step_and_stream_only():
    cfg = load_config(None, ["train.input_noise=0.2"])
    torch.manual_seed(0)  # the inputs; the noise itself is keyed by (seed, step, stream)
    x = torch.randint(0, 65, (64, 100))
    original = x.clone()
    whole = noisy_inputs(cfg, 7, 0, x, 65)
    assert torch.equal(noisy_inputs(cfg, 7, 10, x[10:30], 65), whole[10:30])  # whichever process draws it
    changed = (whole != x).float().mean()
    assert 0.18 < changed < 0.21  # 20% drawn, of which 1/65 draw the character that was there (6,400 draws)
    assert whole.min() >= 0 and whole.max() < 65 and whole.dtype == x.dtype
    assert not torch.equal(noisy_inputs(cfg, 8, 0, x, 65), whole)
    assert torch.equal(x, original)  # the caller's inputs are left alone
    assert noisy_inputs(load_config(None, []), 7, 0, x, 65) is x


def test_activation_penalty_is_ar_plus_tar():
    top = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [0.0, 1.0]]])  # (b=1, T=3, H=2)
    cfg = load_config(None, ["train.activation_reg=2", "train.temporal_reg=0.5"])
    squares = (1 + 4 + 9 + 0 + 0 + 1) / 6
    steps = ((3 - 1) ** 2 + (0 + 2) ** 2 + (0 - 3) ** 2 + (1 - 0) ** 2) / 4
    assert activation_penalty(cfg, top).item() == pytest.approx(2 * squares + 0.5 * steps)


def test_weight_average_ramps_up_then_follows_the_decay():
    torch.manual_seed(0)
    weights = CharLSTM(vocab_size=5, embed=2, hidden=3, layers=1, dropout=0.0)
    average = WeightAverage(CharLSTM(vocab_size=5, embed=2, hidden=3, layers=1, dropout=0.0), decay=0.99)
    start = {k: v.clone() for k, v in average.model.state_dict().items()}
    average.update(weights, step=0)  # decay min(0.99, 1/10) = 0.1
    for key, value in average.model.state_dict().items():
        torch.testing.assert_close(value, 0.1 * start[key] + 0.9 * weights.state_dict()[key])
    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    average.update(weights, step=10_000)  # decay 0.99
    for key, value in average.model.state_dict().items():
        torch.testing.assert_close(value, 0.99 * before[key] + 0.01 * weights.state_dict()[key])
    assert not any(p.requires_grad for p in average.model.parameters())
