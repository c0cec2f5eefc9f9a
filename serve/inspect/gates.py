"""Gate saturation (Karpathy et al. 2015, fig. 3): the fraction of steps each input, forget and output gate spends
below 0.1 and above 0.9, computed in numpy from the .onnx's own weights.

The weights are found by following the graph export/onnx.py writes, not by their names (the exporter numbers
them): each layer's gates are the input of a 4-way Split, a sum of the token table Gather(table, token), MatMuls
of the layer's own h (Gather(h, layer)) and of the layer below's output, and constant biases. An int8 model
(--int8, onnxruntime's dynamic quantization) has MatMulInteger in place of MatMul: its weights are dequantized
and its inputs quantized per step as DynamicQuantizeLinear does, so numpy computes what onnxruntime computes.
Every step is checked: h and c recomputed from the gates must equal the h and c onnxruntime returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

# max |h, c difference| against onnxruntime, per step. int8: the inputs are quantized as onnxruntime does, but
# in float64 (a value at a rounding tie may land one step apart), and onnxruntime's x86 u8s8 kernels without VNNI
# add pairs of int8 products in 16 bits, which saturates on rare large pairs: 1.3e-3 measured on a 2 x 256 model.
TOLERANCE = {"fp32": 1e-4, "int8": 5e-3}
LOW, HIGH = 0.1, 0.9


class GateError(ValueError):
    """The graph is not the one export/onnx.py writes: saturation is left out, with this reason."""


@dataclass
class Term:
    """One summand of a layer's gate pre-activations (4H,): source `token` (a (V, 4H) table), `h` (the layer's
    own previous h), `below` (the output of the layer below) or `bias`; int8 weights carry their scale."""

    source: str
    weight: np.ndarray
    scale: float | None = None  # int8: weight holds (q - zero point), the real weight is weight * scale


@dataclass
class Layer:
    table: np.ndarray | None = None  # (V, 4H), the first layer only
    w_h: np.ndarray | None = None  # (H, 4H)
    w_below: np.ndarray | None = None  # (H, 4H), the layers above the first
    scales: dict = field(default_factory=dict)  # int8: source -> weight scale
    bias: np.ndarray | float = 0.0  # (4H,)


class Graph:
    def __init__(self, proto: onnx.ModelProto):
        self.init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        self.producer = {out: node for node in proto.graph.node for out in node.output}
        self.splits = [n for n in proto.graph.node if n.op_type == "Split" and len(n.output) == 4]

    def node(self, name: str) -> onnx.NodeProto:
        if name not in self.producer:
            raise GateError(f"{name} is neither a weight nor a node's output")
        return self.producer[name]

    def layer_index(self, name: str) -> int | None:
        """i when `name` is Gather(h, i), the layer's own previous h; None otherwise."""
        node = self.producer.get(name)
        if node is not None and node.op_type == "Gather" and node.input[0] == "h" and node.input[1] in self.init:
            return int(self.init[node.input[1]])
        return None

    def terms(self, name: str) -> list[tuple[Term, int | None]]:
        """The summands of `name`, each with the layer of its own h (None for the others)."""
        if name in self.init:
            return [(Term("bias", self.init[name].astype(np.float32)), None)]
        node = self.node(name)
        if node.op_type == "Add":
            return self.terms(node.input[0]) + self.terms(node.input[1])
        if node.op_type == "Gather" and node.input[1] == "token" and node.input[0] in self.init:
            return [(Term("token", self.init[node.input[0]].astype(np.float32)), None)]
        if node.op_type == "MatMul" and node.input[1] in self.init:
            return [self.product(node.input[0], self.init[node.input[1]].astype(np.float32))]
        if node.op_type == "Mul":  # int8: Cast(MatMulInteger(q(x), Wq, zx, zw)) * (scale_x * scale_w)
            integer = self.producer.get(self.producer.get(node.input[0], node).input[0])
            if integer is not None and integer.op_type == "MatMulInteger":
                quantized = self.node(integer.input[0])  # DynamicQuantizeLinear(x)
                wq, zw = self.init[integer.input[1]], self.init[integer.input[3]]
                scale = float(self.init[self.node(node.input[1]).input[1]])
                # integers in float32: a sum of H products of at most 127 x 255 is exact below 2^24
                term, index = self.product(quantized.input[0], (wq.astype(np.int32) - int(zw)).astype(np.float32))
                term.scale = scale
                return [(term, index)]
        raise GateError(f"unexpected {node.op_type} node ({name}) in the gates of a layer")

    def product(self, x: str, weight: np.ndarray) -> tuple[Term, int | None]:
        index = self.layer_index(x)
        return Term("h" if index is not None else "below", weight), index


def read_layers(path: str) -> tuple[list[Layer], str]:
    """The gate weights of every layer, in order, and the precision (fp32 or int8); GateError if the graph is
    not an export's."""
    graph = Graph(onnx.load(str(path)))
    layers: dict[int, Layer] = {}
    int8 = False
    for split in graph.splits:
        terms = graph.terms(split.input[0])
        own = [index for _, index in terms if index is not None]
        if len(own) != 1:
            raise GateError("a layer's gates do not read exactly one layer's h")
        layer = layers.setdefault(own[0], Layer())
        for term, _ in terms:
            if term.source == "bias":
                layer.bias = layer.bias + term.weight
            elif term.source == "token":
                layer.table = term.weight
            else:
                setattr(layer, "w_h" if term.source == "h" else "w_below", term.weight)
                if term.scale is not None:
                    layer.scales[term.source] = term.scale
                    int8 = True
    ordered = [layers.get(i) for i in range(len(layers))]
    if not ordered or any(layer is None or layer.w_h is None for layer in ordered) or ordered[0].table is None:
        raise GateError("the layers' gates are not the token table, h and the layer below")
    if any(layer.w_below is None for layer in ordered[1:]):
        raise GateError("a layer above the first does not read the layer below")
    return ordered, "int8" if int8 else "fp32"


def quantized_matmul(x: np.ndarray, weight: np.ndarray, scale: float | None) -> np.ndarray:
    """x (T, H) @ weight (H, 4H), in float32 as onnxruntime (a batched matmul: the check costs a fraction of the
    steps); for int8 x is first quantized per row (one step at batch 1 is one tensor) as DynamicQuantizeLinear
    does: uint8, the range widened to hold 0, round half to even."""
    if scale is None:
        return x @ weight
    low = np.minimum(x.min(axis=1, keepdims=True), 0.0)
    high = np.maximum(x.max(axis=1, keepdims=True), 0.0)
    x_scale = (high - low) / np.float32(255.0)
    x_scale = np.where(x_scale == 0, np.float32(1.0), x_scale)
    zero = np.clip(np.rint(-low / x_scale), 0, 255)
    q = np.clip(np.rint(x / x_scale) + zero, 0, 255) - zero
    return (q @ weight) * (x_scale * np.float32(scale))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


class Saturation:
    """Counts, per layer, gate (i, f, o) and unit, the steps spent below LOW and above HIGH, a chunk of steps at
    a time, and the largest difference between the h and c recomputed here and onnxruntime's."""

    def __init__(self, layers: list[Layer], precision: str):
        self.layers, self.precision = layers, precision
        hidden = layers[0].w_h.shape[0]
        self.low = np.zeros((len(layers), 3, hidden), dtype=np.int64)  # (L, gate i/f/o, H)
        self.high = np.zeros((len(layers), 3, hidden), dtype=np.int64)
        self.steps = 0
        self.max_diff = 0.0

    def update(self, tokens: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, h: np.ndarray, c: np.ndarray):
        """tokens (T,); h_prev, c_prev (T, L, H) float32: the state each step started from; h, c (T, L, H):
        onnxruntime's state after it."""
        for i, layer in enumerate(self.layers):
            if i == 0:
                pre = layer.table[tokens]  # (T, 4H)
            else:
                pre = quantized_matmul(h[:, i - 1], layer.w_below, layer.scales.get("below")) + layer.bias
            pre = pre + quantized_matmul(h_prev[:, i], layer.w_h, layer.scales.get("h"))
            i_gate, f_gate, g_gate, o_gate = np.split(pre, 4, axis=1)  # nn.LSTM's order, as trainer/model.py
            gates = sigmoid(np.stack([i_gate, f_gate, o_gate], axis=1))  # (T, 3, H)
            c_new = gates[:, 1] * c_prev[:, i] + gates[:, 0] * np.tanh(g_gate)
            h_new = gates[:, 2] * np.tanh(c_new)
            diff = max(np.abs(c_new - c[:, i]).max(), np.abs(h_new - h[:, i]).max())
            self.max_diff = max(self.max_diff, float(diff))
            self.low[i] += (gates < LOW).sum(axis=0)
            self.high[i] += (gates > HIGH).sum(axis=0)
        self.steps += len(tokens)

    def result(self) -> dict:
        """The figures for the report and the JSON: per layer and gate, each unit's fractions."""
        tolerance = TOLERANCE[self.precision]
        checked = {"precision": self.precision, "max_diff": self.max_diff, "tolerance": tolerance, "steps": self.steps}
        if not self.max_diff <= tolerance:
            reason = (
                f"the gates recomputed from the weights miss onnxruntime's h and c by up to {self.max_diff:.3g} "
                f"(tolerance {tolerance:g} for {self.precision})"
            )
            return {"layers": None, "reason": reason, "check": checked}
        layers = [
            {
                gate: {"low": (self.low[i, g] / self.steps).tolist(), "high": (self.high[i, g] / self.steps).tolist()}
                for g, gate in enumerate(("input", "forget", "output"))
            }
            for i in range(len(self.layers))
        ]
        return {"layers": layers, "reason": None, "check": checked}
