"""Train a character LSTM: `accelerate launch trainer/train.py --config FILE [key.sub=value ...]`.

`python trainer/train.py ...` and `python -m trainer.train ...` do the same in one process.

The global batch is B contiguous character streams (trainer/data.py). Process r of N owns streams
[r*B/N, (r+1)*B/N) and carries their LSTM state from window to window (truncated BPTT); DDP averages
the gradients, so N processes compute what one computes. Rerunning on an out_dir holding ckpt.pt resumes
from it, on any number of processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

if __package__ in (None, ""):  # `python trainer/train.py` / `accelerate launch trainer/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import Config, UserError, load_config, save_config
from trainer.data import EvalStreams, TrainStreams, load_corpus, split
from trainer.model import CharLSTM, build_model

LN2 = math.log(2.0)
MAX_BAD_STEPS = 10  # this many non-finite steps in a row stop the run


class TrainingError(Exception):
    """Training cannot go on (diverged); printed as one line."""


# ---------------------------------------------------------------- small helpers


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup to train.lr, then cosine decay to train.min_lr at decay_steps (default max_steps), flat
    after. A pure function of the step."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    horizon = t.decay_steps or t.max_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, horizon - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


def stream_seed(seed: int, step: int, stream: int, purpose: str = "") -> int:
    digest = hashlib.blake2b(f"{seed}/{step}/{stream}{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dropout_masks(cfg: Config, step: int, first: int, last: int, device: torch.device) -> torch.Tensor | None:
    """Keep-masks (L, b, T, H) (T = 1 with locked dropout: the same mask at every step of the window)
    scaled by 1/(1-p) for streams [first, last), drawn from a generator seeded
    by (seed, step, stream): independent of the process count and of anything that happened before."""
    p = cfg.model.dropout
    if p == 0.0:
        return None
    shape = (cfg.model.layers, 1 if cfg.model.locked_dropout else cfg.train.seq_len, cfg.model.hidden)
    noise = torch.empty((last - first, *shape), device=device)
    generator = torch.Generator(device=device)
    for i, stream in enumerate(range(first, last)):
        generator.manual_seed(stream_seed(cfg.train.seed, step, stream))
        noise[i].uniform_(generator=generator)  # 3x cheaper than bernoulli_ on a CPU
    return ((noise >= p) * (1.0 / (1.0 - p))).transpose(0, 1)  # (L, b, T, H)


def state_resets(cfg: Config, step: int, first: int, last: int) -> torch.Tensor | None:
    """Which of streams [first, last) start this window from a zero state: each with probability
    train.state_reset, keyed by (seed, step, stream) like the dropout masks. Why: sampling starts from a zero
    state, but carried training state is zero only at epoch starts, so without these resets a model can
    learn to handle fresh starts badly (a short prime then derails the sample)."""
    p = cfg.train.state_reset
    if p == 0.0:
        return None
    draws = [stream_seed(cfg.train.seed, step, stream, "reset") / 2**63 for stream in range(first, last)]
    return torch.tensor(draws) < p  # (b,)


def noisy_inputs(cfg: Config, step: int, first: int, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """x (b, T) for streams [first, first + b) with each character replaced, with probability train.input_noise,
    by one drawn uniformly from the vocabulary (data noising as smoothing, Xie et al. 2017); the targets stay.
    Keyed by (seed, step, stream) like the dropout masks. Returns x itself when the option is off."""
    p = cfg.train.input_noise
    if p == 0.0:
        return x
    hits, draws = torch.empty(x.shape), torch.empty(x.shape, dtype=torch.int64)
    generator = torch.Generator()
    for i in range(x.shape[0]):
        generator.manual_seed(stream_seed(cfg.train.seed, step, first + i, "noise"))
        hits[i].uniform_(generator=generator)
        draws[i].random_(vocab_size, generator=generator)
    return torch.where(hits.to(x.device) < p, draws.to(device=x.device, dtype=x.dtype), x)  # (b, T)


def activation_penalty(cfg: Config, top: torch.Tensor) -> torch.Tensor:
    """AR + TAR of AWD-LSTM on the last layer's output top (b, T, H) before dropout: large activations and
    fast changes from one character to the next cost extra. A regularizer: it is added to what is
    minimized, never to the reported loss."""
    top = top.float()
    penalty = cfg.train.activation_reg * top.pow(2).mean()
    if top.shape[1] > 1:
        penalty = penalty + cfg.train.temporal_reg * (top[:, 1:] - top[:, :-1]).pow(2).mean()
    return penalty


def weight_masks(cfg: Config, step: int, device: torch.device) -> torch.Tensor | None:
    """Keep-masks (L, 4H, H) for the recurrent matrices (weight drop), scaled by 1/(1-p); keyed by (seed, step)
    only, so every process and every micro-batch of a step drops the same weights."""
    p = cfg.model.weight_drop
    if p == 0.0:
        return None
    hidden = cfg.model.hidden
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(cfg.train.seed, step, -1))  # stream -1: no stream draws this key
    noise = torch.empty((cfg.model.layers, 4 * hidden, hidden), device=device).uniform_(generator=generator)
    return (noise >= p) * (1.0 / (1.0 - p))


def lstms_outside_autocast(model: CharLSTM, device_type: str) -> None:
    """Run the model's nn.LSTM layers in fp32 inside an autocast region; the rest (head, loss) keeps its precision.

    Why, for bf16 on a GPU: PyTorch's autocast wrapper for cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp)
    casts them to fp16 whatever dtype autocast was given, so `bf16` would run the LSTM in fp16 with no loss
    scaling, where small gradients underflow to zero. In fp32 cuDNN uses TF32 tensor cores (Ampere and later)
    while torch.backends.cudnn.allow_tf32 is on, its default. The weights are untouched: only how each layer's
    forward is called changes, so state_dict keys, DDP and weight drop (functional_call) are as before."""
    for lstm in model.lstms:

        def fp32_forward(x, state=None, _forward=lstm.forward):
            with torch.autocast(device_type, enabled=False):
                return _forward(x.float(), None if state is None else (state[0].float(), state[1].float()))

        lstm.forward = fp32_forward


def make_optimizer(model: CharLSTM, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    groups = [
        {"params": matrices, "weight_decay": cfg.train.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # one kernel for all parameters on GPU
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, cfg.train.beta2), fused=fused or None)


def check_resumable(ckpt: dict, cfg: Config, vocab: list[str], path: Path) -> None:
    """Refuse, naming the difference, a checkpoint that does not fit this run; nothing gets overwritten."""
    if ckpt["vocab"] != vocab:
        raise UserError(
            f"{path} was trained on a different vocabulary ({len(ckpt['vocab'])} characters, this corpus has "
            f"{len(vocab)}): use another out_dir"
        )
    old = ckpt["config"]
    for section, key in [
        ("model", "embed"),
        ("model", "hidden"),
        ("model", "layers"),
        ("train", "batch_size"),
        ("train", "seq_len"),
    ]:
        before, now = old.get(section, {}).get(key), getattr(getattr(cfg, section), key)
        if before != now:
            raise UserError(
                f"{path} holds a run with {section}.{key}={before}, this config says {now}: "
                "use another out_dir, or the same value to resume"
            )
    if ckpt["step"] > cfg.train.max_steps:
        raise UserError(f"{path} is at step {ckpt['step']}, past train.max_steps={cfg.train.max_steps}")


class StopFlags:
    """SIGTERM / SIGINT ask the loop to finish the current step, save and exit."""

    def __init__(self):
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(e["step"], e["train_loss"]) for e in events if "train_loss" in e]
    val = [(e["step"], e["val_loss"]) for e in events if "val_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the run


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state; a second train() in the same process (tests, notebooks)
    # may ask for another precision, so start from a clean one.
    AcceleratorState._reset_state(reset_partial_state=True)
    precision = cfg.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.mixed_precision=fp16 needs a GPU; on a CPU use bf16 (or no)")
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    if precision == "bf16" and accelerator.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.mixed_precision=bf16: this GPU has no bf16; use fp16")
    return accelerator


def evaluate(model: CharLSTM, evals: EvalStreams, first: int, last: int, accelerator) -> float:
    """Loss in nats/char over the WHOLE validation split; streams sharded over processes, sums reduced."""
    model.eval()
    device = accelerator.device
    h, c = model.zero_state(last - first, device)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, count)
    with torch.no_grad(), accelerator.autocast():
        for x, y in evals.windows(first, last):
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            logits, (h, c) = model(x, (h, c))
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            total[0] += loss.double()
            total[1] += y.numel()
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1]).item()


def train(cfg: Config) -> int:
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    processes, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    t = cfg.train
    if t.batch_size % processes:
        raise UserError(f"train.batch_size={t.batch_size} does not divide over {processes} processes")
    local_batch = t.batch_size // processes
    if local_batch % t.grad_accum:
        raise UserError(f"train.grad_accum={t.grad_accum} must divide the {local_batch} streams of each process")
    first, last = rank * local_batch, (rank + 1) * local_batch  # this process's streams

    with accelerator.main_process_first():  # rank 0 encodes and caches the corpus, the others reuse it
        corpus = load_corpus(cfg.data.path)
    train_ids, val_ids = split(corpus.ids, cfg.data.val_fraction)
    streams = TrainStreams(train_ids, t.batch_size, t.seq_len)
    evals = EvalStreams(val_ids, t.batch_size, t.seq_len)

    out_dir = Path(cfg.out_dir)
    ckpt_path, best_path = out_dir / "ckpt.pt", out_dir / "best.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {str(out_dir)!r} exists and is not a folder")
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        check_resumable(ckpt, cfg, corpus.vocab, ckpt_path)

    torch.manual_seed(t.seed)
    model = build_model(len(corpus.vocab), cfg.model)
    if ckpt is not None:  # with train.ema_decay, "model" is the average and "train_weights" what Adam updates
        model.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
    # Weight averaging: an exponential moving average of the weights, updated after every step, is what gets
    # evaluated, kept as best.pt and exported. It smooths out the noise of the last steps (up to 0.02 nats in
    # the middle of the 10-minute runs), which lets a smaller batch and stronger dropout pay off (README).
    averaged: CharLSTM | None = None
    if t.ema_decay > 0:
        averaged = build_model(len(corpus.vocab), cfg.model)
        resumed_average = ckpt is not None and "train_weights" in ckpt
        averaged.load_state_dict(ckpt["model"] if resumed_average else model.state_dict())
        averaged.to(device).eval().requires_grad_(False)
    if device.type == "cuda" and t.mixed_precision == "bf16":
        for module in (model, averaged) if averaged is not None else (model,):
            lstms_outside_autocast(module, device.type)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    model, optimizer = accelerator.prepare(model, optimizer)
    bare = accelerator.unwrap_model(model)

    step = 0 if ckpt is None else ckpt["step"]
    best_val = math.inf if ckpt is None else ckpt.get("best_val_loss", math.inf)
    if ckpt is not None:
        h = ckpt["streams"]["h"][first:last].transpose(0, 1).contiguous().to(device)  # (L, b, H)
        c = ckpt["streams"]["c"][first:last].transpose(0, 1).contiguous().to(device)
    else:
        h, c = bare.zero_state(local_batch, device)
    del ckpt

    metrics_path = out_dir / "metrics.jsonl"
    if main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in out_dir.glob(".*.pt.*.tmp"):  # a save cut short by kill -9; the .pt beside it is whole
                stale.unlink(missing_ok=True)
            save_config(cfg, out_dir / "config.yaml")
        except OSError as e:
            raise UserError(f"out_dir {str(out_dir)!r} cannot be written: {e.strerror or e}") from None

    def log(event: dict) -> None:
        if main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")

    def gather_streams(tensor: torch.Tensor) -> torch.Tensor:
        """(L, b, H) local state -> (B, L, H) of all streams, in stream order, on the CPU."""
        return accelerator.gather(tensor.transpose(0, 1).contiguous()).cpu()

    def save(path: Path, val_loss: float | None) -> None:
        state_h, state_c = gather_streams(h), gather_streams(c)  # collective: every rank takes part
        if not main:
            return
        if not all(torch.isfinite(p).all() for p in bare.parameters()):
            raise TrainingError("the weights are not finite; refusing to write a checkpoint")
        payload = {
            "model": (averaged or bare).state_dict(),  # the weights val_loss measures
            "optimizer": optimizer.state_dict(),
            "vocab": corpus.vocab,
            "config": cfg.to_dict(),
            "step": step,
            "val_loss": val_loss,
            "best_val_loss": best_val,
            "corpus_sha256": corpus.sha256,
            "streams": {"h": state_h, "c": state_c},
        }
        if averaged is not None:
            payload["train_weights"] = bare.state_dict()
        try:
            save_checkpoint(path, payload)
        except OSError as e:  # disk full, folder removed...: the previous file is still whole
            raise TrainingError(f"could not write {path}: {e.strerror or e}; the previous checkpoint is kept") from None

    def run_eval() -> float:
        nonlocal best_val
        val = evaluate(averaged or bare, evals, first, last, accelerator)
        log({"step": step, "val_loss": val, "val_bpc": val / LN2})
        if val < best_val:
            best_val = val
            save(best_path, val)
        return val

    stop = StopFlags()
    stop.install()
    started = time.monotonic()
    params = list(model.parameters())
    micro = local_batch // t.grad_accum
    if main:
        resumed = f", resumed at step {step}" if step else ""
        print(
            f"charlstm: {len(corpus.ids):,} chars, vocab {len(corpus.vocab)}, "
            f"{sum(p.numel() for p in params) / 1e6:.2f}M params, {processes} process(es) on {device.type}, "
            f"{t.mixed_precision}, {streams.windows_per_epoch} windows/epoch{resumed}",
            file=sys.stderr,
        )
    from tqdm import tqdm

    penalized = t.activation_reg > 0 or t.temporal_reg > 0
    bar = tqdm(total=t.max_steps, initial=step, disable=not main, dynamic_ncols=True, mininterval=1.0)
    bad_steps, loss_sum, loss_count = 0, torch.zeros((), device=device), 0
    window_clock, window_start_step = time.monotonic(), step
    val_loss: float | None = None
    stopped_by: str | None = None
    model.train()

    try:  # the bar is closed before any error line is printed
        while step < t.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            if streams.starts_epoch(step):
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            elif (resets := state_resets(cfg, step, first, last)) is not None and resets.any():
                keep = (~resets).to(device=device, dtype=h.dtype)[None, :, None]  # (1, b, 1)
                h, c = h * keep, c * keep
            x, y = streams.window(step, first, last)
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            x = noisy_inputs(cfg, step, first, x, len(corpus.vocab))
            masks = dropout_masks(cfg, step, first, last, device)
            w_masks = weight_masks(cfg, step, device)

            step_loss = torch.zeros((), device=device)
            new_h, new_c = [], []
            for k in range(t.grad_accum):
                part = slice(k * micro, (k + 1) * micro)
                sync = k == t.grad_accum - 1
                with nullcontext() if sync else accelerator.no_sync(model):
                    logits, (hk, ck), top = model(
                        x[part],
                        (h[:, part], c[:, part]),
                        None if masks is None else masks[:, part],
                        w_masks,
                        with_top=True,
                    )
                    loss = F.cross_entropy(logits.float().flatten(0, 1), y[part].flatten())
                    objective = loss + activation_penalty(cfg, top) if penalized else loss
                    accelerator.backward(objective / t.grad_accum)
                step_loss += loss.detach() / t.grad_accum
                new_h.append(hk.detach().float())
                new_c.append(ck.detach().float())
            h, c = torch.cat(new_h, dim=1), torch.cat(new_c, dim=1)

            grad_norm = accelerator.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf)
            # fp16: GradScaler itself skips a step whose gradients overflowed (and lowers the scale), so only a
            # non-finite loss counts as bad there; otherwise a non-finite gradient norm does too.
            finite = torch.isfinite(step_loss) & (torch.isfinite(grad_norm) | (t.mixed_precision == "fp16"))
            # One small all-reduce per step: the ranks agree on skipping, on stopping, and on the wall clock.
            flags = torch.stack(
                [
                    (~finite).float(),
                    torch.tensor(float(stop.signal_name is not None), device=device),
                    torch.tensor(
                        float(main and t.max_minutes is not None and time.monotonic() - started > 60 * t.max_minutes),
                        device=device,
                    ),
                ]
            )
            flags = accelerator.reduce(flags, reduction="sum").tolist() if processes > 1 else flags.tolist()
            if flags[0] > 0:
                if t.mixed_precision == "fp16":
                    optimizer.step()  # lets the scaler close this iteration (it skips the update)
                optimizer.zero_grad(set_to_none=True)
                h, c = torch.zeros_like(h), torch.zeros_like(c)  # the state went bad with the loss
                bad_steps += 1
                log({"step": step, "skipped": "non-finite loss or gradient norm"})
                if bad_steps >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"{MAX_BAD_STEPS} non-finite steps in a row at step {step}: lower train.lr or use "
                        "train.mixed_precision=bf16/no; the last good checkpoint is kept"
                    )
            else:
                bad_steps = 0
                optimizer.step()
                if optimizer.step_was_skipped:  # fp16 only: the gradients overflowed, the scaler lowered the scale
                    log({"step": step, "skipped": "fp16 gradient overflow; loss scale lowered"})
                if averaged is not None:
                    # the decay ramps up from 0.1 so that the average soon forgets the random init
                    decay = min(t.ema_decay, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for average, weight in zip(averaged.parameters(), bare.parameters()):
                            average.lerp_(weight, 1.0 - decay)
                optimizer.zero_grad(set_to_none=True)
                loss_sum += step_loss
                loss_count += 1
            step += 1
            bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                mean_loss = accelerator.reduce(loss_sum, reduction="mean").item() / max(1, loss_count)
                now = time.monotonic()
                chars_per_s = (step - window_start_step) * t.batch_size * t.seq_len / max(1e-9, now - window_clock)
                window_clock, window_start_step = now, step
                loss_sum, loss_count = torch.zeros((), device=device), 0
                log({"step": step, "train_loss": mean_loss, "lr": lr_at(step - 1, cfg), "chars_per_s": chars_per_s})
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_at(step - 1, cfg):.2e}", cps=f"{chars_per_s:,.0f}")

            if flags[1] > 0:
                stopped_by = stop.signal_name or "signal"
                save(ckpt_path, None)
                break
            final = step == t.max_steps or flags[2] > 0
            val_loss = None
            if step % t.eval_every == 0 or final:
                val_loss = run_eval()
                if main:
                    bar.write(f"step {step}: val {val_loss:.4f} nats ({val_loss / LN2:.4f} bpc)")
            if step % t.save_every == 0 or final:
                save(ckpt_path, val_loss)
            if flags[2] > 0:
                stopped_by = f"train.max_minutes={t.max_minutes}"
                break
    finally:
        bar.close()

    if main:
        if metrics_path.exists():
            plot_losses(metrics_path, out_dir / "loss.png")
        if stopped_by and stopped_by.startswith("SIG"):
            print(f"charlstm: stopped by {stopped_by} after step {step}; saved {ckpt_path} (rerun to resume)")
        elif val_loss is not None:
            print(
                f"charlstm: step {step}: val {val_loss:.4f} nats ({val_loss / LN2:.4f} bpc), "
                f"best {best_val:.4f}; saved {ckpt_path}" + (f" (stopped by {stopped_by})" if stopped_by else "")
            )
        else:
            print(f"charlstm: nothing to do, {ckpt_path} is at step {step} = train.max_steps")
    # All ranks tear the process group down together: a rank that exits while another still writes its
    # checkpoint can abort in gloo's teardown ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trainer.train",
        description="Train a character-level LSTM. Rerun the same command on the same out_dir to resume.",
        epilog="example: python -m trainer.train --config configs/tiny.yaml train.max_steps=40 out_dir=runs/x",
    )
    parser.add_argument("--config", help="YAML config (configs/tiny.yaml, configs/shakespeare.yaml, ...)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.hidden=256")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    speaks = int(os.environ.get("RANK", "0")) == 0  # on N processes, one of them reports the error
    try:
        cfg = load_config(args.config, args.overrides)
        return train(cfg)
    except (UserError, TrainingError) as e:
        if speaks:
            print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UserError) else 1
    except KeyboardInterrupt:
        if speaks:
            print("charlstm: interrupted before training started; nothing saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
