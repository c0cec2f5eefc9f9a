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
