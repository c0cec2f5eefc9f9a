import pytest
import torch

from trainer.dist.precision import cpu_runs_bf16_lstm
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


def test_bool_dropout_masks_keep_and_scale_by_one_over_one_minus_p():
    """The trainer's masks are bools (True keeps): a kept unit is scaled by 1/(1-p), as with the multiplier
    masks, and a dropped one is 0."""
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=4, hidden=8, layers=2, dropout=0.25).train()
    tokens = torch.randint(0, 10, (3, 6))
    keep = torch.rand(2, 3, 6, 8) > 0.25
    with torch.no_grad():
        from_bools, _ = model(tokens, None, keep)
        from_multipliers, _ = model(tokens, None, keep.float() / 0.75)
        torch.testing.assert_close(from_bools, from_multipliers, rtol=0, atol=0)
        assert not torch.allclose(from_bools, model(tokens, None, torch.ones(2, 3, 6, 8))[0])  # the scale counts


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


def test_fp32_lstm_runs_the_lstm_layers_in_fp32_under_autocast():
    """The model's switch for bf16 on GPUs (where autocast would run cuDNN LSTMs in fp16), checked on the CPU:
    under bf16 autocast a model built with fp32_lstm gives exactly the fp32 state, one without it does not."""
    if not cpu_runs_bf16_lstm():
        pytest.skip("this CPU cannot run the bf16 LSTM (no AVX-512 BF16 or AMX in oneDNN)")
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=8, hidden=32, layers=2, dropout=0.0).eval()
    guarded = CharLSTM(vocab_size=10, embed=8, hidden=32, layers=2, dropout=0.0, fp32_lstm=True).eval()
    guarded.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 10, (3, 20))
    with torch.no_grad():
        _, (h_fp32, c_fp32) = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, (h_bf16, _) = model(tokens)
            logits, (h, c) = guarded(tokens)
    assert not torch.equal(h_bf16.float(), h_fp32)  # autocast does change the LSTM's precision
    assert h.dtype == c.dtype == torch.float32
    assert torch.equal(h, h_fp32) and torch.equal(c, c_fp32)
    assert logits.dtype == torch.bfloat16  # the head still runs in the autocast dtype
    assert set(guarded.state_dict()) == set(model.state_dict())


def test_with_top_gives_the_last_layer_output_before_dropout():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=4, hidden=8, layers=2, dropout=0.5).train()
    tokens = torch.randint(0, 10, (2, 5))
    masks = (torch.rand(2, 2, 5, 8) > 0.5) * 2.0
    logits, _, top = model(tokens, None, masks, with_top=True)
    torch.testing.assert_close(logits, model.head(top * masks[1]))
    eval_logits, _, eval_top = model.eval()(tokens, with_top=True)
    torch.testing.assert_close(eval_logits, model.head(eval_top))
