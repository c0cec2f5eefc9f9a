"""An exported cell against the PyTorch model it came from, before the file appears: onnx.checker, then
onnxruntime against CharLSTM.step over PARITY_CHARS characters of text at batch 1 and 4 (max |logits
difference| <= PARITY_TOLERANCE), and GREEDY_CHARS greedy characters that must be identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from trainer.errors import UserError
from trainer.model import CharLSTM

PARITY_TOLERANCE = 1e-4  # max |logits difference|, fp32
PRIME_CHARS = 50  # characters read before the comparisons start: they compare primed states
PARITY_CHARS, GREEDY_CHARS = 200, 500


def verify(path: Path, model: CharLSTM, vocab: list[str], text: str) -> list[str]:
    """Parity of onnxruntime with the PyTorch step; raises UserError on any mismatch. Returns the report's
    lines."""
    import onnxruntime as ort  # export checks that it is installed, with a line saying how to install it

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    worst = {batch: logits_parity(session, model, ids, batch) for batch in (1, 4)}
    parity = (
        f"parity with PyTorch step over {PARITY_CHARS} chars: max |logits difference| "
        + ", ".join(f"{v:.2e} at batch {b}" for b, v in worst.items())
        + f" (limit {PARITY_TOLERANCE:g})"
    )
    greedy_parity(session, model, ids)
    return ["onnx.checker: ok", parity, f"greedy {GREEDY_CHARS} chars: identical to PyTorch"]


def logits_parity(session, model: CharLSTM, ids: np.ndarray, batch: int) -> float:
    """The largest |logits difference| over PARITY_CHARS characters from a primed state, `batch` streams read
    from spread-out offsets of the text; UserError past PARITY_TOLERANCE."""
    offsets = np.arange(batch) * ((len(ids) - PRIME_CHARS - PARITY_CHARS) // 4)
    h_t, c_t = model.zero_state(batch)
    h_o, c_o = h_t.numpy(), c_t.numpy()
    worst = 0.0
    with torch.no_grad():
        for t in range(PRIME_CHARS + PARITY_CHARS):
            token = ids[offsets + t]
            logits_t, h_t, c_t = model.step(torch.from_numpy(token), h_t, c_t)
            logits_o, h_o, c_o = session.run(None, {"token": token, "h": h_o, "c": c_o})
            if t >= PRIME_CHARS:
                worst = max(worst, float(np.abs(logits_o - logits_t.numpy()).max()))
    if not worst <= PARITY_TOLERANCE:
        raise UserError(
            f"export failed verification: max |logits difference| {worst:.3g} at batch {batch} "
            f"exceeds {PARITY_TOLERANCE:g}"
        )
    return worst


def greedy_parity(session, model: CharLSTM, ids: np.ndarray) -> None:
    """GREEDY_CHARS greedy characters after the text's first PRIME_CHARS, each side feeding back its own
    choice: they must be the same text; UserError at the first that differs."""
    greedy_t, greedy_o = [], []
    with torch.no_grad():
        h_t, c_t = model.zero_state(1)
        h_o, c_o = h_t.numpy(), c_t.numpy()
        for token in ids[:PRIME_CHARS]:
            logits_t, h_t, c_t = model.step(torch.tensor([token]), h_t, c_t)
            logits_o, h_o, c_o = session.run(None, {"token": np.array([token]), "h": h_o, "c": c_o})
        for _ in range(GREEDY_CHARS):
            next_t, next_o = int(logits_t.argmax()), int(logits_o.argmax())
            greedy_t.append(next_t)
            greedy_o.append(next_o)
            logits_t, h_t, c_t = model.step(torch.tensor([next_t]), h_t, c_t)
            logits_o, h_o, c_o = session.run(None, {"token": np.array([next_o]), "h": h_o, "c": c_o})
    if greedy_t != greedy_o:
        where = next(i for i, (a, b) in enumerate(zip(greedy_t, greedy_o)) if a != b)
        raise UserError(f"export failed verification: greedy text differs from PyTorch at character {where}")
