"""Rewrites of the ONNX graph paddle2onnx writes, into forms the runtimes run faster, computing
the same values. Applied to every export, FP32 and INT8 alike (ptqdet.export), so the two stay
comparable.

- **The box distribution's softmax over an outer axis** (`outer_axis_softmax`). GFL-style heads
  (PicoDet, GFL) decode each box side as the expectation of a softmax over K bins: paddle2onnx
  writes Transpose(NCHW -> NHWC) -> Reshape([-1, K]) -> Softmax(axis 1) -> MatMul(bins [K]) ->
  Reshape([N, H*W, m]). OpenVINO's CPU Softmax over an innermost axis of 8 elements is slow (the
  real PicoDet-s spent more time in its four softmaxes than in any other non-convolution node:
  docs/results/findings.md). The same values as Reshape([N, m, K, H*W]) -> Softmax(axis 2) ->
  Mul(bins) -> ReduceSum(axis 2) -> Transpose([N, H*W, m]): the softmax runs along the
  contiguous H*W. Needs opset >= 13 (Softmax over one axis) and the static C, H, W shape
  inference gives, which an export of a fixed input size has (PicoDet's); anything else (the
  coverage GFL's export, whose positions are computed at run time) is left as it is.
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


def _distribution_softmax(g: _Graph, softmax: Any) -> tuple[list[Any], str, np.ndarray, tuple[int, int, int]] | None:
    """The nodes of one inner-axis distribution softmax (Transpose .. final Reshape), its NCHW
    input, its bins and (m, K, H*W); None where the pattern does not match exactly."""
    reshape = g.producer.get(softmax.input[0])
    transpose = g.producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if transpose is None or transpose.op_type != "Transpose" or list(_attribute(transpose, "perm", [])) != [0, 2, 3, 1]:
        return None
    x_shape, rows = g.shapes.get(transpose.input[0]), g.shapes.get(softmax.input[0])
    if not x_shape or len(x_shape) != 4 or None in x_shape[1:] or not rows or len(rows) != 2 or not rows[1]:
        return None
    (channels, height, width), bins = x_shape[1:], rows[1]
    matmul = _only_user(g, softmax.output[0], "MatMul")
    out = _only_user(g, matmul.output[0], "Reshape") if matmul is not None else None
    weights = g.constants.get(matmul.input[1]) if matmul is not None else None
    if out is None or weights is None or weights.shape != (bins,) or channels % bins \
            or _attribute(softmax, "axis", -1) not in (1, -1) \
            or g.shapes.get(out.output[0], [])[1:] != [height * width, channels // bins]:
        return None
    if _only_user(g, transpose.output[0], "Reshape") is None or _only_user(g, reshape.output[0], "Softmax") is None:
        return None
    return [transpose, reshape, softmax, matmul, out], transpose.input[0], weights, \
        (channels // bins, bins, height * width)


def outer_axis_softmax(model: Any) -> int:
    """Rewrite each distribution softmax (module docstring) in place; how many were rewritten."""
    from onnx import helper, numpy_helper

    g = _index(model)
    graph = model.graph
    replaced: dict[int, list[Any]] = {}  # id(final Reshape) -> new nodes; the other old nodes dropped
    dropped: set[int] = set()
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _distribution_softmax(g, softmax)
        if found is None:
            continue
        old, x, weights, (sides, bins, positions) = found
        p = f"ptqdet_outer_softmax{len(replaced)}"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0, sides, bins, positions], np.int64), f"{p}_shape"),
            numpy_helper.from_array(weights.astype(np.float32).reshape(1, 1, bins, 1), f"{p}_bins"),
            numpy_helper.from_array(np.array([2], np.int64), f"{p}_axes")])
        replaced[id(old[-1])] = [
            helper.make_node("Reshape", [x, f"{p}_shape"], [f"{p}_grouped"], name=f"{p}_reshape"),
            helper.make_node("Softmax", [f"{p}_grouped"], [f"{p}_softmax"], axis=2, name=f"{p}_softmax"),
            helper.make_node("Mul", [f"{p}_softmax", f"{p}_bins"], [f"{p}_weighted"], name=f"{p}_mul"),
            helper.make_node("ReduceSum", [f"{p}_weighted", f"{p}_axes"], [f"{p}_sides"], keepdims=0,
                             name=f"{p}_sum"),
            helper.make_node("Transpose", [f"{p}_sides"], [old[-1].output[0]], perm=[0, 2, 1], name=f"{p}_transpose")]
        dropped.update(id(n) for n in old)
    if replaced:
        nodes = [new for node in graph.node for new in (replaced.get(id(node), []) +
                                                         ([] if id(node) in dropped else [node]))]
        del graph.node[:]
        graph.node.extend(nodes)
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
