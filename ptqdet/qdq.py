"""ptqdet's INT8 ONNX: the float graph from paddle2onnx, with QDQ nodes written from the
Paddle INT8 model's own integer weights and calibrated scales.

Why not paddle2onnx's own conversion of the QDQ model: a PaddleSlim QDQ model (onnx_format)
carries a quantize/dequantize pair after the output of nearly every op (batch norm, activation,
...): they record scales for Paddle Inference, which runs only the quantized layers in INT8.
paddle2onnx turns them all into real QuantizeLinear/DequantizeLinear nodes, quantizes the
weights of layers PTQ kept in float (it sees a quantized input), folds batch norms into
quantized weights (and aborts on some: "Require the scale >= 0"). That costs mAP on OpenVINO
and ONNX Runtime against Paddle Inference's INT8 run of the same model
(docs/results/qdq_export.md, docs/results/findings.md).

Here the INT8 ONNX model is what Paddle Inference (oneDNN) runs: QDQ on the input and the
weights of each quantized layer and nowhere else, with the same integers and steps:

1. `strip_qdq` removes the model's quantize/dequantize ops from the loaded Paddle program,
   writes the dequantized weights back as float (for paddle2onnx) and returns, per quantized
   layer, its int8 weights, per-channel weight steps and input step.
2. paddle2onnx converts that float program (the path every FP32 model takes).
3. `insert_qdq` puts DequantizeLinear(int8 weights) and QuantizeLinear/DequantizeLinear on the
   input in front of each of those layers' ONNX Conv (paddle2onnx names a Conv's weight
   constant after the Paddle weight).

Weights are int8, symmetric. Activations hold the values Paddle computes (x / step rounded and
clipped to [-128, 127]), written in the form OpenVINO runs fastest and right (2026.4.1, the
pinned version), chosen per convolution input:
- inputs of ordinary convolutions: int8, zero point 0. A zero point becomes the convolution's
  "input zero point", and on CPUs with AMX OpenVINO then compiles each convolution whose fused
  output quantization is per channel (those feeding equalized depthwise inputs,
  PTQ.equalize_depthwise) with its legacy JIT kernel instead of brgconv, which is much slower.
- inputs of depthwise convolutions: uint8, zero point 128 (the same values): with int8 inputs
  OpenVINO's depthwise INT8 kernel loses accuracy, at no speed gain.
- inputs that a Concat produces: uint8, zero point 128. On CPUs without AMX (AMD EPYC with
  avx512_vnni, 2026.4.1) OpenVINO computes a convolution reading a Concat through a symmetric
  int8 quantization wrongly (PP-YOLOE-s's mAP collapses; each such input alone moves the
  outputs against ONNX Runtime, the other inputs none); on Xeon with AMX it computed them
  right, and 2024.6 got them wrong everywhere. PicoDet-s has none.
The measurements behind each choice: docs/results/findings.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .paddle_static import QDQ_OP_TYPES, WEIGHT_SLOTS

# quantized Paddle layers this export writes, and the ONNX node paddle2onnx makes of each (its
# weight read by the Paddle weight's name as input 1): convolutions, and linear layers (matmul_v2,
# mul: transformer projections and feed-forward layers) as MatMul
ONNX_NODE_OF = {"conv2d": "Conv", "depthwise_conv2d": "Conv", "matmul_v2": "MatMul", "mul": "MatMul"}
SUPPORTED_LAYERS = tuple(ONNX_NODE_OF)
# activation zero point (and so its type): the same integers as int8 with 0 or uint8 with 128.
# uint8 for depthwise inputs and for inputs one of UINT8_PRODUCERS writes, int8 otherwise: see
# the module docstring
INT8_ZERO_POINT, UINT8_ZERO_POINT = np.int8(0), np.uint8(128)
UINT8_LAYERS = ("depthwise_conv2d",)
UINT8_PRODUCERS = ("Concat",)
# what an export's QDQ nodes look like: results measured on an export (runtime mAP) are valid
# for exports of the same format only
QDQ_FORMAT = ("ptqdet-qdq-3: conv inputs int8 (zero point 0); depthwise inputs and inputs written by a Concat "
              "uint8 (128)")


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


@dataclass
class _Dequantized:
    """What the dequantize_linear ops of a QDQ program stand for."""

    source: dict[str, str] = field(default_factory=dict)  # dequantize output -> the float tensor it stands for
    input_steps: dict[str, float] = field(default_factory=dict)  # dequantized activation -> its step
    weights: dict[str, tuple[np.ndarray, np.ndarray, int | None]] = field(default_factory=dict)  # int8, steps, axis


def _float_weight(op: Any, var: Any, steps: np.ndarray, scope: Any, place: Any
                  ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Replace a weight's integers by their float values in `scope` (and its var's dtype by
    FP32); returns its int8 values, steps and channel axis."""
    from paddle.base import core

    tensor = scope.find_var(var.name).get_tensor()
    ints = np.array(tensor)
    axis = op.attr("quant_axis") if steps.size > 1 else None
    shape = [1] * ints.ndim
    if axis is not None:
        shape[axis] = -1
    tensor.set((ints.astype(np.float32) * steps.reshape(shape)), place)
    var.desc.set_dtype(core.VarDesc.VarType.FP32)
    return ints.astype(np.int8), steps, axis


def _read_dequantize_ops(block: Any, ops: list[Any], scope: Any, place: Any) -> _Dequantized:
    """Every dequantize_linear op: a weight's (its float values written back to `scope`) or an
    activation's (behind a quantize_linear op)."""
    producer = {name: op for op in ops for name in op.output_arg_names}
    found = _Dequantized()
    for op in ops:
        if op.type != "dequantize_linear":
            continue
        x, y = op.input("X")[0], op.output("Y")[0]
        if op.attr("bit_length") != 8:
            raise QDQExportError(f"{x!r} is quantized to {op.attr('bit_length')} bits; the ONNX QDQ export writes 8")
        steps = _steps(np.array(scope.find_var(op.input("Scale")[0]).get_tensor()), op.attr("bit_length"))
        var = block.var(x)
        if var.persistable:  # a weight: stored as integers, dequantized by this op
            if x not in found.weights:
                found.weights[x] = _float_weight(op, var, steps, scope, place)
            found.source[y] = x
        else:
            quant = producer.get(x)
            if quant is None or quant.type != "quantize_linear":
                raise QDQExportError(f"dequantize_linear of {x!r} does not follow a quantize_linear op")
            found.source[y] = quant.input("X")[0]
            found.input_steps[y] = float(steps[0])
    return found


def _quantized_layer(op: Any, found: _Dequantized) -> QuantizedLayer | None:
    """The quantized layer `op` is (None: not a layer with dequantized weights)."""
    slots = WEIGHT_SLOTS.get(op.type)
    if not slots:
        return None
    act, weight = op.input(slots[0])[0], op.input(slots[1])[0]
    if weight not in found.source or found.source[weight] not in found.weights:
        return None
    name = found.source[weight]
    if op.type not in SUPPORTED_LAYERS:
        raise QDQExportError(f"the model quantizes a {op.type} layer ({name}); ptqdet's QDQ "
                             f"export writes quantized {', '.join(SUPPORTED_LAYERS)} layers only "
                             "(quantize without it: PTQ.quantizable_op_type)")
    if act not in found.input_steps:
        raise QDQExportError(f"the {op.type} layer {name} has quantized weights but no quantized input")
    if op.type == "matmul_v2" and (op.attr("trans_x") or op.attr("trans_y")):
        raise QDQExportError(f"the matmul_v2 layer {name} transposes an operand (trans_x/trans_y); ptqdet's QDQ "
                             "export writes linear layers x @ W only (quantize without matmul_v2: "
                             "PTQ.quantizable_op_type)")
    if op.type == "mul" and (op.attr("x_num_col_dims") != 1 or op.attr("y_num_col_dims") != 1) \
            and len(found.weights[name][0].shape) != 2:
        raise QDQExportError(f"the mul layer {name} is not a 2-D linear layer; quantize without mul "
                             "(PTQ.quantizable_op_type)")
    ints, steps, axis = found.weights[name]
    return QuantizedLayer(op.type, name, ints, steps, axis, found.input_steps[act])


def strip_qdq(program: Any, scope: Any, place: Any) -> list[QuantizedLayer]:
    """Turn a loaded Paddle QDQ program (PaddleSlim onnx_format) into its float program, in
    place: quantize/dequantize ops removed, integer weights replaced by their float values in
    `scope`. Returns the quantized layers in program order."""
    block = program.global_block()
    ops = list(block.ops)
    found = _read_dequantize_ops(block, ops, scope, place)
    layers: list[QuantizedLayer] = []
    for op in ops:
        if op.type in QDQ_OP_TYPES:
            continue
        layer = _quantized_layer(op, found)
        if layer is not None:
            layers.append(layer)
        for name in op.input_arg_names:
            if name in found.source:
                op._rename_input(name, found.source[name])  # noqa: SLF001 - the public API has no rename
    block._sync_with_cpp()  # noqa: SLF001 - once: a removal that syncs re-reads the whole block (quadratic)
    for i in reversed(range(len(block.ops))):
        if block.ops[i].type in QDQ_OP_TYPES:
            block._remove_op(i, sync=False)  # noqa: SLF001
    return layers


def _safe_steps(steps: np.ndarray) -> np.ndarray:
    """A channel whose weights are all zero has step 0; any step gives it the same zeros."""
    return np.where(steps > 0, steps, np.float32(1.0)).astype(np.float32)


def _weight_dq(layer: QuantizedLayer) -> tuple[list[Any], Any]:
    """The int8 weight, step and zero-point initializers of a layer and its DequantizeLinear node
    (output `<weight>.dequantized`)."""
    from onnx import helper, numpy_helper

    base = layer.weight
    steps = _safe_steps(layer.weight_step)
    if layer.axis is None:  # per tensor: ONNX wants scalars
        steps = steps.reshape(())
    initializers = [numpy_helper.from_array(layer.weight_int8, f"{base}.int8"),
                    numpy_helper.from_array(steps, f"{base}.step"),
                    numpy_helper.from_array(np.zeros(steps.shape, np.int8), f"{base}.zero")]
    attrs = {"axis": layer.axis} if layer.axis is not None else {}
    node = helper.make_node("DequantizeLinear", [f"{base}.int8", f"{base}.step", f"{base}.zero"],
                            [f"{base}.dequantized"], name=f"{base}.DequantizeLinear", **attrs)
    return initializers, node


def _input_qdq(name: str, input_step: float, index: int, zero_point: np.integer) -> tuple[list[Any], list[Any]]:
    """The step and zero-point initializers and the QuantizeLinear/DequantizeLinear pair on an
    activation (output `<name>.qdq<index>.dequantized`)."""
    from onnx import helper, numpy_helper

    base = f"{name}.qdq{index}"
    step = input_step if input_step > 0 else float(np.finfo(np.float32).tiny)
    initializers = [numpy_helper.from_array(np.array(step, np.float32), f"{base}.step"),
                    numpy_helper.from_array(np.array(zero_point), f"{base}.zero")]
    nodes = [helper.make_node("QuantizeLinear", [name, f"{base}.step", f"{base}.zero"],
                              [f"{base}.quantized"], name=f"{base}.QuantizeLinear"),
             helper.make_node("DequantizeLinear", [f"{base}.quantized", f"{base}.step", f"{base}.zero"],
                              [f"{base}.dequantized"], name=f"{base}.DequantizeLinear")]
    return initializers, nodes


def _splice(graph: Any, before: dict[int, list[Any]], initializers: list[Any]) -> None:
    """Insert the new nodes in front of their Conv nodes and add the new initializers; drop the
    float weight constants and initializers nothing reads any more."""
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


def activation_zero_point(op_type: str, producer: str | None) -> np.integer:
    """Zero point (and type) of a quantized convolution input: by the Paddle layer type that
    reads it and the ONNX op type that writes it (None: a graph input)."""
    return UINT8_ZERO_POINT if op_type in UINT8_LAYERS or producer in UINT8_PRODUCERS else INT8_ZERO_POINT


def insert_qdq(onnx_path: Path, layers: list[QuantizedLayer]) -> int:
    """Write QDQ nodes in front of the Conv (and MatMul) nodes of the quantized layers (in place).
    Returns how many nodes were quantized; QDQExportError if a layer has no such node."""
    import onnx

    model = onnx.load(str(onnx_path))
    pending: dict[str, list[QuantizedLayer]] = {}
    for layer in layers:
        pending.setdefault(layer.weight, []).append(layer)
    initializers: list[Any] = []
    before: dict[int, list[Any]] = {}  # id(Conv node) -> nodes to insert in front of it
    weight_dq: dict[str, str] = {}
    input_qdq: dict[tuple[str, float, str], str] = {}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    quantized = 0
    for node in model.graph.node:
        if len(node.input) < 2 or not pending.get(node.input[1]) \
                or node.op_type != ONNX_NODE_OF[pending[node.input[1]][0].op_type]:
            continue
        layer = pending[node.input[1]].pop(0)  # layers sharing a weight: program order
        new = before.setdefault(id(node), [])
        if layer.weight not in weight_dq:
            inits, dq = _weight_dq(layer)
            initializers += inits
            new.append(dq)
            weight_dq[layer.weight] = dq.output[0]
        zero_point = activation_zero_point(layer.op_type, producers.get(node.input[0]))
        key = (node.input[0], layer.input_step, zero_point.dtype.name)
        if key not in input_qdq:
            inits, qdq = _input_qdq(node.input[0], layer.input_step, len(input_qdq), zero_point)
            initializers += inits
            new += qdq
            input_qdq[key] = qdq[-1].output[0]
        node.input[0] = input_qdq[key]
        node.input[1] = weight_dq[layer.weight]
        quantized += 1
    missing = sorted(name for name, left in pending.items() if left)
    if missing:
        raise QDQExportError(f"no ONNX Conv or MatMul reads the weights of quantized layers {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}: paddle2onnx named or fused them differently")
    _splice(model.graph, before, initializers)
    onnx.save(model, str(onnx_path))
    return quantized
