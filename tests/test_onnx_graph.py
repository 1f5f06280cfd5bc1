"""ptqdet.onnx_graph: rewrites of paddle2onnx's graph compute the same values."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ptqdet.onnx_graph import outer_axis_softmax, rewrite_onnx

SIDES = 4


def _head(opset: int = 13, height: int | None = 5, bins: int = 8) -> onnx.ModelProto:
    """A PicoDet distribution head as paddle2onnx writes it: NCHW [1, 4K, H, W] -> NHWC ->
    [-1, K] -> Softmax -> MatMul(bins) -> [1, H*W, 4], then an Add reading the result."""
    width = 3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIDES * bins, height or "h", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, SIDES])
    inits = [numpy_helper.from_array(np.array([-1, bins], np.int64), "rows"),
             numpy_helper.from_array(np.arange(bins, dtype=np.float32), "project"),
             numpy_helper.from_array(np.array([1, -1, SIDES], np.int64), "out_shape"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half")]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"], axis=1),
             helper.make_node("MatMul", ["s", "project"], ["m"]),
             helper.make_node("Reshape", ["m", "out_shape"], ["d"]),
             helper.make_node("Add", ["d", "half"], ["y"])]
    graph = helper.make_graph(nodes, "head", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _gfl_head(bins: int = 17, scale_channels: int = 1) -> onnx.ModelProto:
    """A GFL head as paddle2onnx writes its GroupNorm export: the input goes through a Reshape to
    its own run-time shape (shape inference loses every dim after it), a Conv to 4K channels, its
    bias and learned scale, the distribution softmax, the stride Mul, then a Reshape to a shape
    computed at run time ([N, -1, 4] from Shape and Concat)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, SIDES])
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((SIDES * bins, 6, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((1, SIDES * bins, 1, 1)).astype(np.float32), "bias"),
             numpy_helper.from_array(np.full((1, scale_channels, 1, 1), 1.5, np.float32), "scale"),
             numpy_helper.from_array(np.array([-1, bins], np.int64), "rows"),
             numpy_helper.from_array(np.arange(bins, dtype=np.float32), "project"),
             numpy_helper.from_array(np.array(8.0, np.float32), "stride"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1, SIDES], np.int64), "rest")]
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Reshape", ["x", "x_shape"], ["opaque"]),
             helper.make_node("Conv", ["opaque", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["conv", "bias"], ["biased"]),
             helper.make_node("Mul", ["biased", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"], axis=1),
             helper.make_node("MatMul", ["s", "project"], ["m"]),
             helper.make_node("Mul", ["m", "stride"], ["strided"]),
             helper.make_node("Slice", ["x_shape", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "rest"], ["out_shape"], axis=0),
             helper.make_node("Reshape", ["strided", "out_shape"], ["y"])]
    graph = helper.make_graph(nodes, "gfl_head", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _softmax_axis(model: onnx.ModelProto) -> list[int]:
    return [helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "Softmax"]


def test_the_distribution_softmax_runs_over_the_outer_axis_with_the_same_values():
    model = _head()
    x = np.random.default_rng(0).standard_normal((1, 32, 5, 3)).astype(np.float32) * 4
    before = _run(model, x)
    assert outer_axis_softmax(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Reshape", "Softmax", "Mul", "ReduceSum", "Transpose", "Reshape", "Reshape", "Add"]
    assert _softmax_axis(model) == [2]
    after = _run(model, x)
    assert before.shape == after.shape == (1, 15, 4)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_run_time_shapes_are_rewritten_and_give_the_same_values_at_every_size():
    """H known only at run time (PicoDet exported without a fixed size), and GFL's export where
    shape inference knows no dim of the head (the channels come from its Conv) and a stride Mul
    and a run-time Reshape read the MatMul: the same values at two input sizes and batch 2."""
    rng = np.random.default_rng(0)
    for build, shapes in ((lambda: _head(height=None), [(1, 32, 5, 3), (1, 32, 7, 3)]),
                          (_gfl_head, [(1, 6, 5, 4), (2, 6, 8, 6)])):
        original, model = build(), build()
        assert outer_axis_softmax(model) == 1 and _softmax_axis(model) == [2]
        onnx.checker.check_model(model, full_check=True)
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32) * 4
            np.testing.assert_allclose(_run(model, x), _run(original, x), rtol=1e-5, atol=1e-5)


def test_what_it_cannot_prove_is_left_as_it_is(tmp_path):
    """A scale that could widen the channels (one per 4K channels: not a head's), channels that
    are not a whole number of distributions, and opset 12 (its Softmax flattens the trailing
    axes): nothing rewritten, the file left byte for byte."""
    assert outer_axis_softmax(_gfl_head(scale_channels=SIDES * 17)) == 1  # per-channel: fine
    widened = _gfl_head()
    conv = next(n for n in widened.graph.node if n.op_type == "Conv")
    weights = next(i for i in widened.graph.initializer if i.name == "w")
    weights.CopyFrom(numpy_helper.from_array(np.ones((1, 6, 3, 3), np.float32), "w"))  # 1 channel, widened by bias
    assert conv.input[1] == "w" and outer_axis_softmax(widened) == 0
    assert outer_axis_softmax(_gfl_head(bins=7)) == 1
    odd = _head(bins=8)
    next(i for i in odd.graph.initializer if i.name == "rows").CopyFrom(
        numpy_helper.from_array(np.array([-1, 6], np.int64), "rows"))  # 32 channels are not rows of 6
    assert outer_axis_softmax(odd) == 0
    path = tmp_path / "model.onnx"
    onnx.save(_head(opset=12), str(path))
    before = path.read_bytes()
    assert rewrite_onnx(path) == {"outer_axis_softmax": 0} and path.read_bytes() == before
