"""The step keeps the host ahead of the device: windows prepared one step ahead, equal to what the
streams give whatever the order of the steps asked, and one read of the device per step, in host_read.
The CUDA side (pinned copies, and no other wait under torch.cuda.set_sync_debug_mode("error")) is in
test_cuda.py."""

from __future__ import annotations

import sys
import threading

import torch
from helpers import EMPTY_CONFIG, ROOT, TINY

from trainer.config import load_config
from trainer.feeder import WindowFeeder
from trainer.regularize import noisy_inputs, state_resets
from trainer.run import Run
from trainer.stopping import Budget, StopFlags
from trainer.train import take_step


def config(*overrides: str):
    return load_config(EMPTY_CONFIG, [*TINY, *overrides])


def test_windows_are_the_streams_noised_and_reset_in_any_order(corpus_100k, tmp_path):
    """Each window is the streams' window with the keyed noise, and its resets as a (1, b, 1) keep; an epoch
    start resets every stream. Asked in order (prefetched), out of order or twice, the same tensors."""
    cfg = config(f"data.path={corpus_100k}", f"out_dir={tmp_path}", "train.input_noise=0.2", "train.state_reset=0.3")
    run = Run.start(cfg)
    streams, vocab = run.streams, len(run.corpus.vocab)
    feeder = WindowFeeder(streams, cfg, 2, 6, vocab, torch.device("cpu"))
    try:
        steps = [0, 1, 2, 3, 7, 8, 2, 2, streams.windows_per_epoch, streams.windows_per_epoch + 1]
        for step in steps:
            window = feeder.window(step)
            x, y = streams.window(step, 2, 6)
            assert torch.equal(window.x, noisy_inputs(cfg, step, 2, torch.from_numpy(x), vocab))
            assert torch.equal(window.y, torch.from_numpy(y)) and not torch.equal(window.x, window.y)
            assert window.epoch_start == (step % streams.windows_per_epoch == 0)
            resets = state_resets(cfg, step, 2, 6)
            if window.epoch_start or not resets.any():
                assert window.keep is None
            else:
                assert torch.equal(window.keep, (~resets).float()[None, :, None])
        assert sum(feeder.window(s).keep is not None for s in range(1, 40)) > 5  # resets do happen
    finally:
        feeder.close()
        run.feeder.close()


def test_a_step_reads_the_device_once_in_host_read(corpus_100k, tmp_path, monkeypatch):
    """On a CPU there is no wait to see, so this counts what a wait needs: a read of a tensor's value (item,
    tolist, bool, float, int, numpy) by the trainer's own code, on the main thread, during steps after the first.
    With dropout, weight drop, resets, noise, grad_accum and the weight average all on, the only one is
    host_read's, once per step."""
    cfg = config(
        f"data.path={corpus_100k}",
        f"out_dir={tmp_path}",
        "train.input_noise=0.1",
        "train.state_reset=0.3",
        "model.weight_drop=0.2",
        "train.ema_decay=0.9",
        "train.grad_accum=2",
        "train.activation_reg=0.1",
    )
    run = Run.start(cfg)
    stop, budget = StopFlags(), Budget(cfg, run.accelerator, run.log, run.say)
    take_step(run, stop, budget)  # the first window is prepared on the spot
    reads: list[str] = []
    trainer_code = str(ROOT / "trainer")

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if threading.current_thread() is threading.main_thread() and caller.startswith(trainer_code):
                reads.append(f"{caller[len(trainer_code) + 1 :]}:{sys._getframe(1).f_lineno} {name}")
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    try:
        for _ in range(3):
            take_step(run, stop, budget)
    finally:
        monkeypatch.undo()
        run.feeder.close()
    assert len(reads) == 3 and all(read.startswith("dist/host_sync.py:") for read in reads), reads
