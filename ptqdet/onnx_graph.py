"""Rewrites of the ONNX graph paddle2onnx writes, into forms the runtimes run faster, computing
the same values. Applied to every export, FP32 and INT8 alike (ptqdet.export), so the two stay
comparable.

- **The box distribution's softmax over an outer axis** (`outer_axis_softmax`). GFL-style heads
  (PicoDet, GFL) decode each box side as the expectation of a softmax over K bins: paddle2onnx
  writes Transpose(NCHW -> NHWC) -> Reshape([-1, K]) -> Softmax(axis 1) -> MatMul(bins [K]),
  whose [N*H*W*m] output a Reshape (after GFL's stride Mul) turns into [N, H*W, m]. OpenVINO's
  CPU Softmax over an innermost axis of 8 elements is slow (the real PicoDet-s spent more time in
  its four softmaxes than in any other non-convolution node: docs/results/findings.md). The same
  values as Reshape([N, m, K, -1]) -> Softmax(axis 2) -> Mul(bins) -> ReduceSum(axis 2) ->
  Transpose -> Reshape([-1]): the softmax runs along the contiguous H*W, and the MatMul's output
  is the same tensor, so what reads it is left as it is. Needs opset >= 13 (Softmax over one
  axis), the constant [-1, K] of the rows and the channel count C = m*K (from shape inference or
  the head's Conv); H and W may be known only at run time (GFL's GroupNorm export).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_OPSET = 13  # Softmax before 13 flattens every axis from `axis` on


@dataclass
class _Graph:
    """Producers, consumers, constants and static shapes of an ONNX graph's tensors."""

    producer: dict[str, Any]
    consumers: dict[str, list[Any]]
    constants: dict[str, np.ndarray]
    shapes: dict[str, list[int | None]]


def _index(model: Any) -> _Graph:
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in values}
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return _Graph({o: n for n in graph.node for o in n.output}, consumers, constants, shapes)


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _only_user(g: _Graph, tensor: str, op_type: str) -> Any | None:
    users = g.consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _constant(g: _Graph, tensor: str) -> np.ndarray | None:
    """The value of a constant tensor: an initializer or Constant, or a Reshape of one to a
    constant shape (paddle2onnx writes a convolution's bias so)."""
    if tensor in g.constants:
        return g.constants[tensor]
    node = g.producer.get(tensor)
    if node is None or node.op_type != "Reshape" or any(i not in g.constants for i in node.input):
        return None
    data, shape = g.constants[node.input[0]], g.constants[node.input[1]]
    if 0 in shape.tolist():  # 0 copies a dim of the data (unless allowzero): not needed here
        return None
    return data.reshape(shape.tolist())


def _channels(g: _Graph, tensor: str) -> int | None:
    """The channel count (dim 1) of an NCHW tensor: from shape inference, else from the Conv it
    comes from through elementwise ops with a constant that cannot widen it (a head's bias and
    scale; shape inference stops at a GroupNorm exported with run-time shapes)."""
    shape = g.shapes.get(tensor)
    if shape and len(shape) == 4 and shape[1]:
        return shape[1]
    node = g.producer.get(tensor)
    scales: list[np.ndarray] = []
    while node is not None and node.op_type in ("Add", "Mul"):
        values = [_constant(g, i) for i in node.input]
        inputs = [i for i, value in zip(node.input, values) if value is None]
        if len(inputs) != 1:
            return None
        scales += [value for value in values if value is not None]
        node = g.producer.get(inputs[0])
    if node is None or node.op_type != "Conv" or node.input[1] not in g.constants:
        return None
    channels = g.constants[node.input[1]].shape[0]
    return channels if all(_keeps_channels(value, channels) for value in scales) else None


def _keeps_channels(value: np.ndarray, channels: int) -> bool:
    """Whether a constant broadcast against [N, channels, H, W] leaves the channels as they are:
    a scalar or a [1, channels or 1, 1, 1] (with its leading 1s left out)."""
    if value.ndim > 4:
        return False
    shape = (1,) * (4 - value.ndim) + tuple(value.shape)
    return shape[0] == 1 and shape[1] in (1, channels) and shape[2:] == (1, 1)


def _distribution_softmax(g: _Graph, softmax: Any) -> tuple[list[Any], str, np.ndarray, tuple[int, int]] | None:
    """The nodes of one inner-axis distribution softmax (Transpose .. MatMul), its NCHW input, its
    bins and (m, K); None where the pattern does not match exactly."""
    reshape = g.producer.get(softmax.input[0])
    transpose = g.producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if transpose is None or transpose.op_type != "Transpose" or list(_attribute(transpose, "perm", [])) != [0, 2, 3, 1]:
        return None
    target = g.constants.get(reshape.input[1])
    if target is None or target.shape != (2,) or target[0] != -1 or target[1] <= 0:
        return None
    bins, channels = int(target[1]), _channels(g, transpose.input[0])
    matmul = _only_user(g, softmax.output[0], "MatMul")
    weights = g.constants.get(matmul.input[1]) if matmul is not None else None
    if weights is None or weights.shape != (bins,) or not channels or channels % bins \
            or _attribute(softmax, "axis", -1) not in (1, -1) or _only_user(g, transpose.output[0], "Reshape") is None \
            or _only_user(g, reshape.output[0], "Softmax") is None:
        return None
    return [transpose, reshape, softmax, matmul], transpose.input[0], weights, (channels // bins, bins)


def outer_axis_softmax(model: Any) -> int:
    """Rewrite each distribution softmax (module docstring) in place; how many were rewritten.
    The new nodes end in the MatMul's own output, [N*H*W*m] in the same order, so whatever read
    it (a stride Mul, a Reshape to a shape computed at run time) reads the same tensor."""
    from onnx import helper, numpy_helper

    g = _index(model)
    graph = model.graph
    replaced: dict[int, list[Any]] = {}  # id(MatMul) -> new nodes; the other old nodes dropped
    dropped: set[int] = set()
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _distribution_softmax(g, softmax)
        if found is None:
            continue
        old, x, weights, (sides, bins) = found
        p = f"ptqdet_outer_softmax{len(replaced)}"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0, sides, bins, -1], np.int64), f"{p}_shape"),
            numpy_helper.from_array(weights.astype(np.float32).reshape(1, 1, bins, 1), f"{p}_bins"),
            numpy_helper.from_array(np.array([2], np.int64), f"{p}_axes"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat")])
        replaced[id(old[-1])] = [
            helper.make_node("Reshape", [x, f"{p}_shape"], [f"{p}_grouped"], name=f"{p}_reshape"),
            helper.make_node("Softmax", [f"{p}_grouped"], [f"{p}_softmax"], axis=2, name=f"{p}_softmax"),
            helper.make_node("Mul", [f"{p}_softmax", f"{p}_bins"], [f"{p}_weighted"], name=f"{p}_mul"),
            helper.make_node("ReduceSum", [f"{p}_weighted", f"{p}_axes"], [f"{p}_sides"], keepdims=0,
                             name=f"{p}_sum"),
            helper.make_node("Transpose", [f"{p}_sides"], [f"{p}_positions"], perm=[0, 2, 1], name=f"{p}_transpose"),
            helper.make_node("Reshape", [f"{p}_positions", f"{p}_flat"], [old[-1].output[0]], name=f"{p}_flatten")]
        dropped.update(id(n) for n in old)
    if replaced:
        orphans = {i for node in graph.node if id(node) in dropped for i in node.input}
        nodes = [new for node in graph.node for new in (replaced.get(id(node), []) +
                                                         ([] if id(node) in dropped else [node]))]
        orphans -= {i for node in nodes for i in node.input} | {o.name for o in graph.output}
        # the rows' shapes and bins only the old nodes read (Constant nodes or initializers)
        nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] in orphans)]
        kept = [t for t in graph.initializer if t.name not in orphans]
        del graph.node[:], graph.initializer[:]
        graph.node.extend(nodes)
        graph.initializer.extend(kept)
    return len(replaced)


def rewrite_onnx(onnx_path: Path) -> dict[str, int]:
    """Apply every rewrite to the model file (in place, only if one applied); per rewrite, how
    many places it changed."""
    import onnx

    model = onnx.load(str(onnx_path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    counts = {"outer_axis_softmax": outer_axis_softmax(model) if opset >= MIN_OPSET else 0}
    if any(counts.values()):
        onnx.save(model, str(onnx_path))
    return counts
