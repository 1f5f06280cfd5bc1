"""ptqdet.onnx_graph: rewrites of paddle2onnx's graph compute the same values."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ptqdet.onnx_graph import outer_axis_softmax, rewrite_onnx


def _head(opset: int = 13, height: int | None = 5, bins: int = 8) -> onnx.ModelProto:
    """A GFL distribution head as paddle2onnx writes it: NCHW [1, 4K, H, W] -> NHWC ->
    [-1, K] -> Softmax -> MatMul(bins) -> [1, H*W, 4], then an Add reading the result."""
    sides, width = 4, 3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sides * bins, height or "h", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, sides])
    inits = [numpy_helper.from_array(np.array([-1, bins], np.int64), "rows"),
             numpy_helper.from_array(np.arange(bins, dtype=np.float32), "project"),
             numpy_helper.from_array(np.array([1, -1, sides], np.int64), "out_shape"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half")]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"], axis=1),
             helper.make_node("MatMul", ["s", "project"], ["m"]),
             helper.make_node("Reshape", ["m", "out_shape"], ["d"]),
             helper.make_node("Add", ["d", "half"], ["y"])]
    graph = helper.make_graph(nodes, "head", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_distribution_softmax_runs_over_the_outer_axis_with_the_same_values():
    model = _head()
    x = np.random.default_rng(0).standard_normal((1, 32, 5, 3)).astype(np.float32) * 4
    before = _run(model, x)
    assert outer_axis_softmax(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Reshape", "Softmax", "Mul", "ReduceSum", "Transpose", "Add"]
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert helper.get_attribute_value(softmax.attribute[0]) == 2
    after = _run(model, x)
    assert before.shape == after.shape == (1, 15, 4)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_shapes_or_opsets_it_cannot_prove_are_left_as_they_are(tmp_path):
    for model in (_head(height=None), _head(bins=7)):  # dynamic H; 28 channels are 4 sides of 7 bins: fine
        count = outer_axis_softmax(model)
        assert count == (0 if model.graph.input[0].type.tensor_type.shape.dim[2].dim_param else 1)
    path = tmp_path / "model.onnx"
    onnx.save(_head(opset=12), str(path))  # Softmax before opset 13 flattens the trailing axes
    before = path.read_bytes()
    assert rewrite_onnx(path) == {"outer_axis_softmax": 0} and path.read_bytes() == before
