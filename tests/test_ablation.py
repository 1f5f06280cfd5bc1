"""The depthwise ablation's model edits (ptqdet.ablation), on tiny inputs: no demo model."""
import numpy as np


def test_round_channels_uses_one_step_per_output_channel():
    from ptqdet.ablation import round_channels

    w = np.array([[[[1.0, 0.5]]], [[[0.0, 0.0]]], [[[-254.0, 1.0]]]], dtype=np.float32)
    r = round_channels(w, bits=8)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r[0], np.round(w[0] * 127) / 127, rtol=1e-6)  # step max|w|/127 = 1/127
    assert not r[1].any()  # an all-zero channel stays zero
    np.testing.assert_allclose(r[2], [[[-254.0, 0.0]]])  # step 2: 1.0 rounds to 0


def _qdq_conv(group: int):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
             helper.make_node("Conv", ["xdq", "w"], ["y"], group=group)]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             helper.make_tensor("w", TensorProto.FLOAT, [2, 2 // group, 1, 1], [1.0] * (4 // group))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph)


def test_float_depthwise_inputs_rewires_depthwise_convs_only(tmp_path):
    import onnx

    from ptqdet.ablation import float_depthwise_inputs

    for group, expected in ((2, 1), (1, 0)):
        src, out = tmp_path / f"src{group}", tmp_path / f"out{group}"
        src.mkdir()
        onnx.save(_qdq_conv(group), str(src / "model.onnx"))
        (src / "export.json").write_text("{}")
        assert float_depthwise_inputs(src, out) == expected
        conv = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Conv"][0]
        assert conv.input[0] == ("x" if expected else "xdq")
        assert (out / "export.json").is_file()
