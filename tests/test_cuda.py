"""CUDA-only checks: bench/gpu_check.sh runs them (`pytest -m cuda`) on a lent GPU machine; here they skip."""

import math

import pytest
import torch
from helpers import run_train

from trainer.checkpoint import load_checkpoint
from trainer.dist.precision import choose_precision
from trainer.model import CharLSTM

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


def test_auto_picks_what_the_gpu_runs():
    precision = choose_precision("auto", "cuda")
    if torch.cuda.is_bf16_supported():
        assert precision.mode == "bf16" and precision.fp32_lstm
    else:
        assert precision.mode == "fp16" and not precision.fp32_lstm


def test_fp32_lstm_under_bf16_autocast_on_cuda():
    """The reason fp32_lstm exists: without it autocast runs cuDNN's LSTM in fp16."""
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=10, embed=8, hidden=64, layers=2, dropout=0.0, fp32_lstm=True).cuda().eval()
    tokens = torch.randint(0, 10, (4, 30), device="cuda")
    with torch.no_grad():
        _, (h_fp32, _) = model(tokens)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, (h, _) = model(tokens)
    assert h.dtype == torch.float32 and logits.dtype == torch.bfloat16
    torch.testing.assert_close(h, h_fp32, atol=1e-5, rtol=1e-5)


def test_gpu_forward_matches_the_cpu():
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=50, embed=16, hidden=128, layers=2, dropout=0.0).eval()
    tokens = torch.randint(0, 50, (8, 40))
    with torch.no_grad():
        cpu_logits, _ = model(tokens)
        gpu_logits, _ = model.cuda()(tokens.cuda())
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=5e-3, rtol=5e-3)  # TF32 in cuDNN


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_trains_on_the_gpu(corpus_100k, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert run_train(f"data.path={corpus_100k}", f"out_dir={tmp_path}", f"train.mixed_precision={precision}") == 0
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 40 and math.isfinite(ckpt["val_loss"]) and ckpt["val_loss"] < 4.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_step_never_waits_on_the_host_but_in_host_read(corpus_100k, tmp_path, precision):
    """After warm-up steps, steps with every option that draws or copies on, under
    torch.cuda.set_sync_debug_mode("error"): any wait of the host for the device other than host_read's (a
    pageable copy, an .item(), a flag built on the host) raises. fp16 adds the loss scale's read."""
    from helpers import EMPTY_CONFIG, TINY

    from trainer.config import load_config
    from trainer.run import Run
    from trainer.step import Budget, StopFlags
    from trainer.train import take_step

    overrides = ["train.input_noise=0.1", "train.state_reset=0.3", "model.weight_drop=0.2", "train.ema_decay=0.9"]
    overrides += ["train.grad_accum=2", "train.activation_reg=0.1", f"train.mixed_precision={precision}"]
    cfg = load_config(EMPTY_CONFIG, [*TINY, f"data.path={corpus_100k}", f"out_dir={tmp_path}", *overrides])
    run = Run.start(cfg)
    stop, budget = StopFlags(), Budget(cfg, run.accelerator, run.log, run.say)
    try:
        for _ in range(3):
            take_step(run, stop, budget)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(5):
            take_step(run, stop, budget)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        run.feeder.close()
    assert run.state.step == 8


def test_dropout_masks_are_the_same_on_the_gpu_and_the_cpu():
    """The masks are a hash computed with integer operations: the device changes no bit."""
    from trainer.config import load_config
    from trainer.regularize import dropout_masks

    cfg = load_config(None, ["model.hidden=64", "model.layers=3", "model.dropout=0.4", "train.seq_len=50"])
    cpu = dropout_masks(cfg, 11, 3, 19, torch.device("cpu"))
    assert torch.equal(dropout_masks(cfg, 11, 3, 19, torch.device("cuda")).cpu(), cpu)
