"""ptqdet's INT8 ONNX: the float graph from paddle2onnx, with QDQ nodes written from the
Paddle INT8 model's own integer weights and calibrated scales.

Why not paddle2onnx's own conversion of the QDQ model: a PaddleSlim QDQ model (onnx_format)
carries a quantize/dequantize pair after the output of nearly every op (batch norm, activation,
...): they record scales for Paddle Inference, which runs only the quantized layers in INT8.
paddle2onnx turns them all into real QuantizeLinear/DequantizeLinear nodes, quantizes the
weights of layers PTQ kept in float (it sees a quantized input), folds batch norms into
quantized weights (and aborts on some: "Require the scale >= 0"). On the demo PicoDet-s that
costs 11 mAP points on OpenVINO and ONNX Runtime against Paddle Inference's INT8 run of the
same model.

Here the INT8 ONNX model is what Paddle Inference (oneDNN) runs: QDQ on the input and the
weights of each quantized layer and nowhere else, with the same integers and steps:

1. `strip_qdq` removes the model's quantize/dequantize ops from the loaded Paddle program,
   writes the dequantized weights back as float (for paddle2onnx) and returns, per quantized
   layer, its int8 weights, per-channel weight steps and input step.
2. paddle2onnx converts that float program (the path every FP32 model takes).
3. `insert_qdq` puts DequantizeLinear(int8 weights) and QuantizeLinear/DequantizeLinear on the
   input in front of each of those layers' ONNX Conv (paddle2onnx names a Conv's weight
   constant after the Paddle weight).

Activations use uint8 with zero point 128: the same values as int8 with zero point 0
(x / step rounded and clipped to [-128, 127]), but OpenVINO 2024.6 computes 1x1 convolutions
fed by a Concat wrongly with symmetric int8 (PP-YOLOE-s: 17 instead of 32 mAP) and correctly
with this form. Weights are int8, symmetric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .paddle_static import QDQ_OP_TYPES, WEIGHT_SLOTS
# quantized Paddle layers this export writes: they become ONNX Conv nodes
SUPPORTED_LAYERS = ("conv2d", "depthwise_conv2d")
ACTIVATION_ZERO_POINT = 128  # uint8


class QDQExportError(RuntimeError):
    """The INT8 model has something ptqdet's QDQ export cannot write."""


@dataclass
class QuantizedLayer:
    """One quantized layer of the Paddle INT8 model, as Paddle Inference runs it."""

    op_type: str
    weight: str  # Paddle weight name; paddle2onnx names the Conv's weight constant after it
    weight_int8: np.ndarray
    weight_step: np.ndarray  # float value of one integer step: [C] per channel, [1] per tensor
    axis: int | None  # channel axis of weight_step (None: per tensor)
    input_step: float  # float value of one integer step of the layer's input


def _steps(scale: np.ndarray, bit_length: int) -> np.ndarray:
    """Paddle's dequantize_linear: value = integer * scale / (2^(bits-1) - 1)."""
    steps = scale.astype(np.float64).reshape(-1) / float(2 ** (bit_length - 1) - 1)
    return steps.astype(np.float32)


def strip_qdq(program: Any, scope: Any, place: Any) -> list[QuantizedLayer]:
    """Turn a loaded Paddle QDQ program (PaddleSlim onnx_format) into its float program, in
    place: quantize/dequantize ops removed, integer weights replaced by their float values in
    `scope`. Returns the quantized layers in program order."""
    from paddle.base import core

    block = program.global_block()
    ops = list(block.ops)
    producer = {name: op for op in ops for name in op.output_arg_names}

    def value(name: str) -> np.ndarray:
        return np.array(scope.find_var(name).get_tensor())

    source: dict[str, str] = {}  # output of a dequantize op -> the float tensor it stands for
    input_steps: dict[str, float] = {}  # dequantized activation -> its step
    weights: dict[str, tuple[np.ndarray, np.ndarray, int | None]] = {}
    for op in ops:
        if op.type != "dequantize_linear":
            continue
        x, y = op.input("X")[0], op.output("Y")[0]
        if op.attr("bit_length") != 8:
            raise QDQExportError(f"{x!r} is quantized to {op.attr('bit_length')} bits; the ONNX QDQ export writes 8")
        steps = _steps(value(op.input("Scale")[0]), op.attr("bit_length"))
        var = block.var(x)
        if var.persistable:  # a weight: stored as integers, dequantized by this op
            if x not in weights:
                ints = value(x)
                axis = op.attr("quant_axis") if steps.size > 1 else None
                shape = [1] * ints.ndim
                if axis is not None:
                    shape[axis] = -1
                scope.find_var(x).get_tensor().set((ints.astype(np.float32) * steps.reshape(shape)), place)
                var.desc.set_dtype(core.VarDesc.VarType.FP32)
                weights[x] = (ints.astype(np.int8), steps, axis)
            source[y] = x
        else:
            quant = producer.get(x)
            if quant is None or quant.type != "quantize_linear":
                raise QDQExportError(f"dequantize_linear of {x!r} does not follow a quantize_linear op")
            source[y] = quant.input("X")[0]
            input_steps[y] = float(steps[0])

    layers: list[QuantizedLayer] = []
    for op in ops:
        if op.type in QDQ_OP_TYPES:
            continue
        slots = WEIGHT_SLOTS.get(op.type)
        if slots:
            act, weight = op.input(slots[0])[0], op.input(slots[1])[0]
            if weight in source and source[weight] in weights:
                if op.type not in SUPPORTED_LAYERS:
                    raise QDQExportError(f"the model quantizes a {op.type} layer ({source[weight]}); ptqdet's QDQ "
                                         f"export writes quantized {', '.join(SUPPORTED_LAYERS)} layers only "
                                         "(quantize without it: PTQ.quantizable_op_type)")
                if act not in input_steps:
                    raise QDQExportError(f"the {op.type} layer {source[weight]} has quantized weights but no "
                                         "quantized input")
                ints, steps, axis = weights[source[weight]]
                layers.append(QuantizedLayer(op.type, source[weight], ints, steps, axis, input_steps[act]))
        for name in op.input_arg_names:
            if name in source:
                op._rename_input(name, source[name])  # noqa: SLF001 - the public API has no rename
    for i in reversed(range(len(block.ops))):
        if block.ops[i].type in QDQ_OP_TYPES:
            block._remove_op(i)  # noqa: SLF001
    return layers


def _safe_steps(steps: np.ndarray) -> np.ndarray:
    """A channel whose weights are all zero has step 0; any step gives it the same zeros."""
    return np.where(steps > 0, steps, np.float32(1.0)).astype(np.float32)


def insert_qdq(onnx_path: Path, layers: list[QuantizedLayer]) -> int:
    """Write QDQ nodes in front of the Conv nodes of the quantized layers (in place).
    Returns how many Conv nodes were quantized; QDQExportError if a layer has no Conv."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    pending: dict[str, list[QuantizedLayer]] = {}
    for layer in layers:
        pending.setdefault(layer.weight, []).append(layer)

    initializers: list[Any] = []
    before: dict[int, list[Any]] = {}  # id(Conv node) -> nodes to insert in front of it
    weight_dq: dict[str, str] = {}
    input_qdq: dict[tuple[str, float], str] = {}
    quantized = 0
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or not pending.get(node.input[1]):
            continue
        layer = pending[node.input[1]].pop(0)  # convs sharing a weight: program order
        new = before.setdefault(id(node), [])
        if layer.weight not in weight_dq:
            base = layer.weight
            steps = _safe_steps(layer.weight_step)
            if layer.axis is None:  # per tensor: ONNX wants scalars
                steps = steps.reshape(())
            initializers += [numpy_helper.from_array(layer.weight_int8, f"{base}.int8"),
                             numpy_helper.from_array(steps, f"{base}.step"),
                             numpy_helper.from_array(np.zeros(steps.shape, np.int8), f"{base}.zero")]
            attrs = {"axis": layer.axis} if layer.axis is not None else {}
            new.append(helper.make_node("DequantizeLinear", [f"{base}.int8", f"{base}.step", f"{base}.zero"],
                                        [f"{base}.dequantized"], name=f"{base}.DequantizeLinear", **attrs))
            weight_dq[layer.weight] = f"{base}.dequantized"
        key = (node.input[0], layer.input_step)
        if key not in input_qdq:
            base = f"{node.input[0]}.qdq{len(input_qdq)}"
            step = layer.input_step if layer.input_step > 0 else float(np.finfo(np.float32).tiny)
            initializers += [numpy_helper.from_array(np.array(step, np.float32), f"{base}.step"),
                             numpy_helper.from_array(np.array(ACTIVATION_ZERO_POINT, np.uint8), f"{base}.zero")]
            new.append(helper.make_node("QuantizeLinear", [node.input[0], f"{base}.step", f"{base}.zero"],
                                        [f"{base}.quantized"], name=f"{base}.QuantizeLinear"))
            new.append(helper.make_node("DequantizeLinear", [f"{base}.quantized", f"{base}.step", f"{base}.zero"],
                                        [f"{base}.dequantized"], name=f"{base}.DequantizeLinear"))
            input_qdq[key] = f"{base}.dequantized"
        node.input[0] = input_qdq[key]
        node.input[1] = weight_dq[layer.weight]
        quantized += 1
    missing = sorted(name for name, left in pending.items() if left)
    if missing:
        raise QDQExportError(f"no ONNX Conv reads the weights of quantized layers {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}: paddle2onnx named or fused them differently")

    nodes = []
    for node in graph.node:
        nodes.extend(before.get(id(node), []))
        nodes.append(node)
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    # the float weight constants the DequantizeLinear nodes replace are dead now
    nodes = [n for n in nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + initializers)
    onnx.save(model, str(onnx_path))
    return quantized
