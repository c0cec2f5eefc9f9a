import pytest
import torch

from trainer.model import CharLSTM


def test_step_equals_forward():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=70, embed=12, hidden=24, layers=3, dropout=0.3).eval()
    tokens = torch.randint(0, 70, (3, 17))
    state = (torch.randn(3, 3, 24) * 0.5, torch.randn(3, 3, 24) * 0.5)  # (L, B, H), a primed state
    with torch.no_grad():
        logits, (h_end, c_end) = model(tokens, state)
        h, c = state
        for t in range(tokens.shape[1]):
            step_logits, h, c = model.step(tokens[:, t], h, c)
            torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_end, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, c_end, atol=1e-5, rtol=1e-5)


def test_dropout_masks_are_applied_between_layers_and_before_the_head():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=4, hidden=8, layers=2, dropout=0.5).train()
    tokens = torch.randint(0, 10, (2, 5))
    ones = torch.ones(2, 2, 5, 8)
    with torch.no_grad():
        no_drop, _ = model.eval()(tokens)
        kept, _ = model.train()(tokens, None, ones)
        torch.testing.assert_close(kept, no_drop)  # all-ones masks: same as no dropout
        head_only = ones.clone()
        head_only[1] = 0  # drop every unit before the head: logits are the head bias alone
        dropped, _ = model(tokens, None, head_only)
        torch.testing.assert_close(dropped, model.head.bias.expand_as(dropped))


def test_dropout_masks_depend_on_step_and_stream_only():
    """A stream's mask is the same whichever process (slice of streams) draws it: N processes equal one."""
    from trainer.config import load_config
    from trainer.train import dropout_masks

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
        assert whole.shape == (2, 8, 1 if locked else 5, 16)
        torch.testing.assert_close(dropout_masks(cfg, 7, 2, 5, torch.device("cpu")), whole[:, 2:5])
        assert not torch.equal(dropout_masks(cfg, 8, 0, 8, torch.device("cpu")), whole)  # a new step, new masks
        assert torch.allclose(whole.unique(), torch.tensor([0.0, 1 / 0.7]))
        assert 0.6 < (whole > 0).float().mean() < 0.8


def test_weight_drop_masks_the_recurrent_matrices_in_training_only():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=4, hidden=8, layers=2, dropout=0.0, weight_drop=0.5)
    tokens = torch.randint(0, 10, (3, 6))
    with torch.no_grad():
        plain, _ = model.eval()(tokens)
        kept, _ = model.train()(tokens, None, None, torch.ones(2, 32, 8))
        torch.testing.assert_close(kept, plain)  # all-ones masks: W_hh as is
        no_recurrence = torch.zeros(2, 32, 8)
        dropped, _ = model(tokens, None, None, no_recurrence)
        for lstm in model.lstms:
            lstm.weight_hh_l0.zero_()
        torch.testing.assert_close(dropped, model.eval()(tokens)[0])


def test_weight_drop_masks_depend_on_the_step_only():
    from trainer.config import load_config
    from trainer.train import weight_masks

    cfg = load_config(None, ["model.hidden=16", "model.layers=2", "model.weight_drop=0.25"])
    masks = weight_masks(cfg, 7, torch.device("cpu"))
    assert masks.shape == (2, 64, 16)
    assert torch.equal(weight_masks(cfg, 7, torch.device("cpu")), masks)
    assert not torch.equal(weight_masks(cfg, 8, torch.device("cpu")), masks)
    assert torch.allclose(masks.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert weight_masks(load_config(None, []), 7, torch.device("cpu")) is None  # off by default


def test_lstms_outside_autocast_run_in_fp32():
    """The trainer's guard for bf16 on GPUs (where autocast would run cuDNN LSTMs in fp16), checked on the CPU:
    under bf16 autocast the patched layers give exactly the fp32 state, the unpatched ones do not."""
    from trainer.train import lstms_outside_autocast

    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=8, hidden=32, layers=2, dropout=0.0).eval()
    tokens = torch.randint(0, 10, (3, 20))
    with torch.no_grad():
        _, (h_fp32, c_fp32) = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, (h_bf16, _) = model(tokens)
        lstms_outside_autocast(model, "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, (h, c) = model(tokens)
    assert not torch.equal(h_bf16.float(), h_fp32)  # autocast does change the LSTM's precision
    assert h.dtype == c.dtype == torch.float32
    assert torch.equal(h, h_fp32) and torch.equal(c, c_fp32)
    assert logits.dtype == torch.bfloat16  # the head still runs in the autocast dtype
    assert set(model.state_dict()) == set(CharLSTM(10, 8, 32, 2, 0.0).state_dict())


def test_state_resets_depend_on_step_and_stream_only():
    from trainer.config import load_config
    from trainer.train import state_resets

    cfg = load_config(None, ["train.state_reset=0.25"])
    whole = torch.stack([state_resets(cfg, step, 0, 64) for step in range(50)])  # (steps, streams)
    assert torch.equal(state_resets(cfg, 7, 10, 30), whole[7, 10:30])  # the same whichever process draws it
    assert 0.2 < whole.float().mean() < 0.3
    assert not torch.equal(whole[7], whole[8])
    assert state_resets(load_config(None, ["train.state_reset=0"]), 7, 0, 64) is None


def test_noisy_inputs_depend_on_step_and_stream_only():
    from trainer.config import load_config
    from trainer.train import noisy_inputs

    cfg = load_config(None, ["train.input_noise=0.2"])
    x = torch.randint(0, 65, (64, 100))
    original = x.clone()
    whole = noisy_inputs(cfg, 7, 0, x, 65)
    assert torch.equal(noisy_inputs(cfg, 7, 10, x[10:30], 65), whole[10:30])  # whichever process draws it
    changed = (whole != x).float().mean()
    assert 0.18 < changed < 0.2  # 20% drawn, of which 1/65 draw the character that was there
    assert whole.min() >= 0 and whole.max() < 65 and whole.dtype == x.dtype
    assert not torch.equal(noisy_inputs(cfg, 8, 0, x, 65), whole)
    assert torch.equal(x, original)  # the caller's inputs are left alone
    assert noisy_inputs(load_config(None, []), 7, 0, x, 65) is x


def test_activation_penalty_is_ar_plus_tar():
    from trainer.config import load_config
    from trainer.train import activation_penalty

    top = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [0.0, 1.0]]])  # (b=1, T=3, H=2)
    cfg = load_config(None, ["train.activation_reg=2", "train.temporal_reg=0.5"])
    squares = (1 + 4 + 9 + 0 + 0 + 1) / 6
    steps = ((3 - 1) ** 2 + (0 + 2) ** 2 + (0 - 3) ** 2 + (1 - 0) ** 2) / 4
    assert activation_penalty(cfg, top).item() == pytest.approx(2 * squares + 0.5 * steps)


def test_with_top_gives_the_last_layer_output_before_dropout():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=4, hidden=8, layers=2, dropout=0.5).train()
    tokens = torch.randint(0, 10, (2, 5))
    masks = (torch.rand(2, 2, 5, 8) > 0.5) * 2.0
    logits, _, top = model(tokens, None, masks, with_top=True)
    torch.testing.assert_close(logits, model.head(top * masks[1]))
    eval_logits, _, eval_top = model.eval()(tokens, with_top=True)
    torch.testing.assert_close(eval_logits, model.head(eval_top))
