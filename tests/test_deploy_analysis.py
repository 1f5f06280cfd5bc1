"""The analysis' held-out split and its float variants of an INT8 ONNX model (no Paddle model)."""
import json

import numpy as np
import pytest

from ptqdet.analysis.heldout import split_ids


def test_split_is_disjoint_deterministic_and_keeps_the_ranking_images_in_the_search_part():
    images = [(i, f"im{i:03d}.png") for i in (7, 3, 11, 1, 5, 9, 2, 4)]
    search, heldout = split_ids(images, ranking_names={"im001.png", "im002.png"})
    assert search | heldout == {i for i, _ in images} and not search & heldout
    assert {1, 2} <= search  # the ranking set is searched, never held out
    # the others sorted by id: 3, 4, 5, 7, 9, 11 -> odd positions held out
    assert heldout == {4, 7, 11}
    assert split_ids(list(reversed(images)), {"im001.png", "im002.png"}) == (search, heldout)


def _qdq_conv_model(path):
    """x -> Q/DQ -> Conv(DQ(int8 w)) -> y, written as a ptqdet export folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(2 * 3 * 1 * 1, dtype=np.int8).reshape(2, 3, 1, 1)
    inits = [numpy_helper.from_array(w, "conv2d_0.w_0.int8"),
             numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "conv2d_0.w_0.step"),
             numpy_helper.from_array(np.zeros(2, np.int8), "conv2d_0.w_0.zero"),
             numpy_helper.from_array(np.array(0.1, np.float32), "x.step"),
             numpy_helper.from_array(np.array(128, np.uint8), "x.zero")]
    nodes = [helper.make_node("DequantizeLinear", ["conv2d_0.w_0.int8", "conv2d_0.w_0.step", "conv2d_0.w_0.zero"],
                              ["conv2d_0.w_0.dequantized"], name="w.DQ", axis=0),
             helper.make_node("QuantizeLinear", ["x", "x.step", "x.zero"], ["x.q"], name="x.Q"),
             helper.make_node("DequantizeLinear", ["x.q", "x.step", "x.zero"], ["x.dq"], name="x.DQ"),
             helper.make_node("Conv", ["x.dq", "conv2d_0.w_0.dequantized"], ["y"], name="Conv.0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    path.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path / "model.onnx"))
    (path / "export.json").write_text(json.dumps({"precision": "INT8"}))
    return w


def test_float_variant_runs_the_layer_on_its_float_input_and_dequantized_weights(tmp_path):
    import onnx
    import onnxruntime as ort

    from ptqdet.analysis.deploy import float_variant, onnx_layer_nodes

    w = _qdq_conv_model(tmp_path / "int8")
    own, qdq = onnx_layer_nodes(tmp_path / "int8" / "model.onnx")["conv2d_0.w_0"]
    assert own == {"Conv.0"} and qdq == {"x.Q", "x.DQ"}
    out = float_variant(tmp_path / "int8", ["conv2d_0.w_0"], tmp_path / "float")
    model = onnx.load(str(out / "model.onnx"))
    assert [n.op_type for n in model.graph.node] == ["Conv"]  # the Q/DQ nodes are gone
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
    y = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    weight = w.astype(np.float32) * np.array([0.5, 0.25], np.float32).reshape(2, 1, 1, 1)
    assert y == pytest.approx(np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x), abs=1e-5)
    with pytest.raises(ValueError, match="QDQ form"):
        float_variant(out, ["conv2d_0.w_0"], tmp_path / "again")


def _fp32_conv_model(path):
    """x -> Conv (weight conv2d_0.w_0) -> y, the float model of _qdq_conv_model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "conv2d_0.w_0")]
    nodes = [helper.make_node("Conv", ["x", "conv2d_0.w_0"], ["y"], name="Conv.0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    path.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path / "model.onnx"))


class _FakeProfiled:
    """A runner whose per-node profile is fixed: node -> (original layer names, µs)."""

    def __init__(self, nodes):
        self.nodes = nodes

    def profiler(self, feed):
        times = {n: us for n, (_, us) in self.nodes.items()}
        return (lambda: times), [(n, names) for n, (names, _) in self.nodes.items()]


def test_conv_kernel_ratio_counts_the_convolutions_alone(tmp_path, monkeypatch):
    from ptqdet.analysis import deploy

    _fp32_conv_model(tmp_path / "fp32")
    _qdq_conv_model(tmp_path / "int8")
    profiles = {"fp32": {"conv": (["Conv.0"], 10.0), "reorder": ([""], 5.0)},
                "int8": {"quantize": (["x.Q"], 7.0), "conv": (["Conv.0", "x.DQ", "w.DQ"], 4.0), "other": (["y"], 3.0)},
                "ir": {"quantize": (["x.Q"], 1.0), "conv": (["Conv.0"], 6.0)}}
    monkeypatch.setattr(deploy, "open_backend", lambda name, path, options: _FakeProfiled(profiles[path.name]))
    feed = {"x": np.zeros((2, 3, 2, 2), np.float32)}
    # the INT8 input quantization, reorders and other nodes are left out: 4 / 10, not 14 / 15
    assert deploy.conv_kernel_ratio(tmp_path / "fp32", tmp_path / "int8", 1, feed, runs=3) == pytest.approx(0.4)
    # an IR (no model.onnx) made from the FP32 export: its Conv names are read from that export
    (tmp_path / "ir").mkdir()
    assert deploy.conv_kernel_ratio(tmp_path / "fp32", tmp_path / "ir", 1, feed, runs=3) == pytest.approx(0.6)
    profiles["ir"] = {"quantize": (["x.Q"], 1.0)}
    with pytest.raises(RuntimeError, match="no convolution"):
        deploy.conv_kernel_ratio(tmp_path / "fp32", tmp_path / "ir", 1, feed, runs=3)


class _FakeTyped(_FakeProfiled):
    def profiler(self, feed):
        times = {n: us for n, (_, us, _) in self.nodes.items()}
        return (lambda: times), [(n, names, kind) for n, (names, _, kind) in self.nodes.items()]


def test_graph_costs_split_conv_and_outside_time_and_count_reorders_and_quantizes(tmp_path, monkeypatch):
    from ptqdet.analysis import deploy

    _fp32_conv_model(tmp_path / "fp32")
    _qdq_conv_model(tmp_path / "int8")
    profiles = {"fp32": {"conv": (["Conv.0"], 10.0, "Convolution"), "r": ([""], 5.0, "Reorder")},
                "int8": {"q": (["x.Q"], 7.0, "FakeQuantize"), "conv": (["Conv.0", "x.DQ", "w.DQ"], 4.0, "Convolution"),
                         "r1": ([""], 2.0, "Reorder"), "r2": ([""], 1.0, "Reorder"), "s": (["y"], 3.0, "Softmax")}}
    monkeypatch.setattr(deploy, "open_backend", lambda name, path, options: _FakeTyped(profiles[path.name]))
    fp32, int8 = deploy.graph_costs(tmp_path / "fp32", tmp_path / "int8", 1, {"x": np.zeros((1, 3, 2, 2), np.float32)},
                                    runs=3)
    assert (fp32.conv_ms, fp32.outside_ms) == pytest.approx((0.010, 0.005))
    assert (int8.conv_ms, int8.outside_ms) == pytest.approx((0.004, 0.013))  # quantize 7 + reorders 3 + softmax 3 µs
    assert fp32.nodes == {"Reorder": 1, "FakeQuantize": 0} and int8.nodes == {"Reorder": 2, "FakeQuantize": 1}


def test_paired_saving_sees_a_small_gain_through_shared_bursts():
    from ptqdet.analysis.deploy import paired_saving

    rng = np.random.default_rng(1)
    burst = rng.choice([0.0, 3.0], size=100, p=[0.7, 0.3])  # another process slows some rounds, both models alike
    before = 8.0 + burst + rng.normal(0, 0.02, 100)
    after = 7.8 + burst + rng.normal(0, 0.02, 100)
    saving, error = paired_saving(list(before), list(after))
    assert saving == pytest.approx(0.2, abs=0.02) and error < 0.02
    same, same_error = paired_saving(list(before), list(before + rng.normal(0, 0.02, 100)))
    assert abs(same) < 2 * same_error + 0.01


def test_layer_costs_cover_the_quantized_layers_only(tmp_path, monkeypatch):
    """A layer skip_tensor_list keeps in float is a Conv without QDQ in the INT8 export: no cost
    of float (the latency base would try to put it in float and find no QDQ to take away)."""
    from ptqdet.analysis import deploy
    from ptqdet.benchmark import ModelSet

    layers = {"fp32": {"a.w": ({"Conv.a"}, set()), "b.w": ({"Conv.b"}, set())},
              "int8": {"a.w": ({"Conv.a"}, {"a.Q", "a.DQ"}), "b.w": ({"Conv.b"}, set())}}
    profiles = [[(["Conv.a"], 10.0, "Convolution"), (["Conv.b"], 8.0, "Convolution")],
                [(["a.Q"], 1.0, "FakeQuantize"), (["Conv.a"], 4.0, "Convolution"), (["Conv.b"], 8.0, "Convolution")]]
    monkeypatch.setattr(deploy, "onnx_layer_nodes", lambda path: layers[path.parent.name])
    monkeypatch.setattr(deploy, "alternated_profiles", lambda backend, exports, threads, feed, runs: profiles)
    models = ModelSet(None, None, onnx={"FP32": str(tmp_path / "fp32"), "INT8": str(tmp_path / "int8")})
    costs = deploy.layer_costs(models, "openvino", 1, {}, runs=1)
    assert list(costs) == ["a.w"]
    assert costs["a.w"]["int8_us"] == 5.0 and costs["a.w"]["cost_ms"] == pytest.approx(0.005)
