"""The character LSTM: embedding -> L stacked LSTM layers -> dropout -> linear head.

Two views of the same weights:
- `forward(tokens, state)` runs whole windows (B, T) through cuDNN / oneDNN LSTM kernels for training;
- `step(token, h, c)` advances one character with the cell written out (gates i, f, g, o as in
  nn.LSTM). It is the reference for export (export/onnx.py traces `cell`) and for the parity tests.
The model knows nothing of accelerate or devices: the trainer owns those. Its one precision switch,
`fp32_lstm`, is set where the model is built (trainer/dist/precision.py decides it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

State = tuple[Tensor, Tensor]  # (h, c), each (L, B, H)


class CharLSTM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed: int,
        hidden: int,
        layers: int,
        dropout: float,
        weight_drop: float = 0.0,
        fp32_lstm: bool = False,
    ):
        super().__init__()
        # fp32_lstm: run the LSTM layers in fp32 inside an autocast region; the head and the loss keep the
        # autocast dtype. Why, for bf16 on a GPU: PyTorch's autocast wrapper for cuDNN RNNs
        # (aten/src/ATen/cudnn/AutocastRNN.cpp) casts them to fp16 whatever dtype autocast was given, so the
        # LSTM would run in fp16 with no loss scaling and small gradients would underflow. In fp32 cuDNN
        # uses TF32 tensor cores (Ampere and later) while torch.backends.cudnn.allow_tf32 is on (default).
        self.fp32_lstm = fp32_lstm
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.dropout = dropout
        self.weight_drop = weight_drop
        self.embed = nn.Embedding(vocab_size, embed)
        # One single-layer nn.LSTM per layer (not one nn.LSTM(num_layers=L)) so that the dropout between
        # layers takes masks from the caller: the trainer keys them by step and stream, which makes
        # N processes equal 1 and resume exact, with dropout on.
        self.lstms = nn.ModuleList(
            nn.LSTM(embed if i == 0 else hidden, hidden, batch_first=True) for i in range(layers)
        )
        self.head = nn.Linear(hidden, vocab_size)
        with torch.no_grad():  # forget-gate bias 1: remember by default early in training
            for lstm in self.lstms:
                lstm.bias_ih_l0[hidden : 2 * hidden].fill_(1.0)
                lstm.bias_hh_l0[hidden : 2 * hidden].zero_()

    def zero_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        shape = (self.layers, batch, self.hidden)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(
        self,
        tokens: Tensor,
        state: State | None = None,
        dropout_masks: Tensor | None = None,
        weight_masks: Tensor | None = None,
        with_top: bool = False,
    ) -> tuple[Tensor, State] | tuple[Tensor, State, Tensor]:
        """tokens (B, T) int64; state (h, c) (L, B, H) or None for zeros; dropout_masks (L, B, T or 1, H)
        one per dropout site (after each layer), bool (True keeps a unit, scaled by 1/(1-p)) or multipliers in
        any float dtype, or None to draw them here;
        weight_masks (L, 4H, H), the same for the recurrent matrices (weight drop), or None to draw them.
        Returns logits (B, T, V) and the state after the last character; with_top adds the last layer's
        output before dropout (B, T, H), which the trainer's activation penalties act on."""
        x = self.embed(tokens)  # (B, T, E)
        hs, cs = [], []
        for i, lstm in enumerate(self.lstms):
            layer_state = (
                None if state is None else (state[0][i : i + 1].contiguous(), state[1][i : i + 1].contiguous())
            )
            mask = None if weight_masks is None else weight_masks[i]
            x, (h, c) = self._run_lstm(lstm, x, layer_state, mask)  # x (B, T, H); h, c (1, B, H)
            top = x
            x = self._dropout(x, dropout_masks, i)
            hs.append(h)
            cs.append(c)
        logits = self.head(x)  # (B, T, V)
        state = (torch.cat(hs), torch.cat(cs))
        return (logits, state, top) if with_top else (logits, state)

    def _run_lstm(self, lstm: nn.LSTM, x: Tensor, state: State | None, weight_mask: Tensor | None):
        if self.fp32_lstm and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                state = None if state is None else (state[0].float(), state[1].float())
                return self._run_lstm(lstm, x.float(), state, weight_mask)
        if self.training and self.weight_drop > 0.0:
            # DropConnect on W_hh (AWD-LSTM): one mask for every step of the window and every stream, so
            # the fused LSTM kernel still runs; at inference W_hh is used as is (the masks are inverted).
            w_hh = lstm.weight_hh_l0
            dropped = w_hh * weight_mask if weight_mask is not None else F.dropout(w_hh, self.weight_drop)
            return functional_call(lstm, {"weight_hh_l0": dropped}, (x, state))
        return lstm(x, state)

    def _dropout(self, x: Tensor, masks: Tensor | None, site: int) -> Tensor:
        if not self.training or self.dropout == 0.0:
            return x
        if masks is None:
            return F.dropout(x, self.dropout, training=True)
        mask = masks[site]
        if mask.dtype == torch.bool:  # keep-masks: backward keeps the bools, not a float copy
            return torch.where(mask, x * (1.0 / (1.0 - self.dropout)), 0.0)
        return x * mask.to(x.dtype)  # multipliers

    # ------------------------------------------------------------ single step (inference)

    def token_gates(self, token: Tensor) -> Tensor:
        """token (B,) -> the first layer's input gate pre-activations (B, 4H), both biases included.
        Over the whole vocabulary this is a (V, 4H) table: export folds embedding and projection into it."""
        first = self.lstms[0]
        return F.linear(self.embed(token), first.weight_ih_l0, first.bias_ih_l0 + first.bias_hh_l0)

    def cell(self, gates0: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One character through the stack, given the first layer's input gates (B, 4H) and the state
        h, c (L, B, H). Returns logits (B, V), h_out, c_out (L, B, H). Written with plain matmuls so the
        exported graph is MatMul/Add/Sigmoid/Tanh/Mul, which every runtime and int8 quantizer handles."""
        hs, cs = [], []
        input_gates = gates0
        for i, lstm in enumerate(self.lstms):
            if i > 0:
                input_gates = hs[-1] @ lstm.weight_ih_l0.T + (lstm.bias_ih_l0 + lstm.bias_hh_l0)
            gates = input_gates + h[i] @ lstm.weight_hh_l0.T  # (B, 4H), nn.LSTM gate order i, f, g, o
            i_gate, f_gate, g_gate, o_gate = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f_gate) * c[i] + torch.sigmoid(i_gate) * torch.tanh(g_gate)
            h_new = torch.sigmoid(o_gate) * torch.tanh(c_new)
            hs.append(h_new)
            cs.append(c_new)
        logits = hs[-1] @ self.head.weight.T + self.head.bias  # (B, V)
        return logits, torch.stack(hs), torch.stack(cs)

    def step(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """token (B,) int64, h and c (L, B, H) -> logits (B, V), h_out, c_out. No dropout."""
        return self.cell(self.token_gates(token), h, c)


def build_model(vocab_size: int, model_cfg, fp32_lstm: bool = False) -> CharLSTM:
    """The model a ModelConfig describes; fp32_lstm as in CharLSTM."""
    m = model_cfg
    return CharLSTM(vocab_size, m.embed, m.hidden, m.layers, m.dropout, m.weight_drop, fp32_lstm)
