"""Accuracy recovery before PTQ: depthwise input equalization keeps the FP32 function and
evens out the depthwise inputs' channel ranges."""
import numpy as np
import pytest

from conftest import DEMO_CONFIGS, write_config
from ptqdet.config import ConfigError, load_config
from ptqdet.data import calibration_loader
from ptqdet.files import ModelFiles, resolve_model_files
from ptqdet.paddle_static import load_static_model
from ptqdet.program import read_program
from ptqdet.recovery import channel_ranges, equalization_scales, equalize_depthwise_inputs


def test_scales_bring_every_channel_to_the_top_range():
    ranges = np.array([4.0, 1.0, 0.5, 0.0], dtype=np.float32)
    scales = equalization_scales(ranges)
    assert scales[0] == pytest.approx(1.0)
    np.testing.assert_allclose((ranges / scales)[:3], [4.0, 4.0, 4.0], rtol=1e-6)
    assert scales[3] == pytest.approx(1e-3)  # a dead channel is held at the floor, never divided by zero
    half = equalization_scales(ranges, strength=0.5)
    np.testing.assert_allclose(half[:3], np.sqrt(scales[:3]), rtol=1e-6)


def _outputs(files: ModelFiles, feeds, fetch: list[str]):
    import paddle

    from ptqdet.paddle_static import static_mode

    with static_mode():
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            program, names, _ = load_static_model(files, exe)
            return [exe.run(program, feed={k: f[k] for k in names}, fetch_list=fetch) for f in feeds]


def test_equalized_model_computes_the_same_and_evens_the_depthwise_inputs(pico_cfg, tmp_path):
    files = resolve_model_files(pico_cfg.model_dir)
    feeds = list(calibration_loader(pico_cfg, 4, 2, progress=False))
    result = equalize_depthwise_inputs(files, tmp_path, feeds)
    dw_ops = [op for op in read_program(files).ops if op.type == "depthwise_conv2d"]
    assert len(result.layers) == len(dw_ops) > 0
    assert max(result.spread.values()) > 4  # the demo's depthwise inputs are uneven to begin with

    out = ModelFiles(tmp_path, "model.pdmodel", "model.pdiparams")
    # the same pre-NMS outputs (boxes and scores feed the NMS) up to float rounding
    pre_nms = [op for op in read_program(files).ops if op.type == "multiclass_nms3"][0].inputs
    fetch = [pre_nms["BBoxes"][0], pre_nms["Scores"][0]]
    for before, after in zip(_outputs(files, feeds, fetch), _outputs(out, feeds, fetch)):
        for a, b in zip(before, after):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

    # every equalized depthwise input now spans one range across its channels
    import paddle

    from ptqdet.paddle_static import static_mode

    eq_inputs = [op.inputs["Input"][0] for op in read_program(out).ops if op.type == "depthwise_conv2d"]
    with static_mode():
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(paddle.static.Scope()):
            program, names, _ = load_static_model(out, exe)
            ranges = channel_ranges(exe, program, ({k: f[k] for k in names} for f in feeds), eq_inputs)
    for name, r in ranges.items():
        live = r[r > 1e-3 * r.max()]
        assert live.min() > 0.99 * live.max(), name


def test_skipped_depthwise_layers_are_left_alone(pico_cfg, tmp_path):
    files = resolve_model_files(pico_cfg.model_dir)
    dw = [op.inputs["Filter"][0] for op in read_program(files).ops if op.type == "depthwise_conv2d"]
    feeds = list(calibration_loader(pico_cfg, 4, 1, progress=False))
    result = equalize_depthwise_inputs(files, tmp_path, feeds, skip=dw[:3])
    assert result.layers == dw[3:]


def test_min_spread_equalizes_only_the_uneven_depthwise_inputs(pico_cfg, tmp_path):
    files = resolve_model_files(pico_cfg.model_dir)
    feeds = list(calibration_loader(pico_cfg, 4, 1, progress=False))
    every = equalize_depthwise_inputs(files, tmp_path / "all", feeds)
    threshold = sorted(every.spread.values())[-3]  # the three most uneven inputs (no ties on the demo)
    some = equalize_depthwise_inputs(files, tmp_path / "some", feeds, min_spread=threshold)
    assert some.layers == [name for name in every.layers if every.spread[name] >= threshold]
    assert 0 < len(some.layers) < len(every.layers)


@pytest.mark.parametrize("line, key", [
    ("equalize_depthwise: 1", "PTQ.equalize_depthwise"),
    ("equalize_strength: 0", "PTQ.equalize_strength"),
    ("equalize_strength: 1.5", "PTQ.equalize_strength"),
    ("equalize_min_spread: 0.5", "PTQ.equalize_min_spread"),
    ("reconstruction: brecqq", "PTQ.reconstruction"),
    ("recon_epochs: 0", "PTQ.recon_epochs"),
])
def test_bad_recovery_keys_are_refused_by_name(tmp_path, line, key):
    path = write_config(tmp_path, f"_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nPTQ:\n  {line}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_adaround_twice_is_a_conflict(tmp_path):
    path = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nPTQ:\n  round_type: adaround\n"
                                  "  reconstruction: brecq\n")
    with pytest.raises(ConfigError, match="choose one"):
        load_config(path)


def test_demo_configs_default_to_equalized_depthwise_inputs():
    for name in ("picodet_s_ptq.yaml", "picodet_s_ptq_deploy.yaml"):
        assert load_config(DEMO_CONFIGS / name).ptq.equalize_depthwise, name


@pytest.mark.slow
def test_demo_picodet_every_convolution_int8_within_one_point_of_fp32(deploy_models):
    """The issue's bar: the demo PicoDet-s with no layer in float (plain PTQ: 43.0) keeps
    FP32 - 1.0 = 51.7 mAP, as the quantized graph computes it and on OpenVINO (the recommended
    CPU runtime), with the deploy config's recipe (its INT8 model: made once per test run)."""
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model
    from ptqdet.quantize import layer_weights, quantized_weights

    cfg, models, _ = deploy_models["picodet_s"]
    assert not cfg.skip_tensor_list and not cfg.skip_op_types
    quantized = quantized_weights(models.int8)
    assert len(quantized) == 98 and quantized == set(layer_weights(models.fp32, cfg.ptq.quantizable_op_type))
    simulated = evaluate_model(cfg, EvalRequest(models.int8, options=BackendOptions(mkldnn=False),
                                                progress=False)).result
    openvino = evaluate_model(cfg, EvalRequest(models.onnx["INT8"], "openvino", progress=False)).result
    assert simulated.map >= 0.517
    assert openvino.map >= 0.517


def test_equalized_model_writes_every_variable_once(pico_cfg, tmp_path):
    """The demo's head branches share depthwise inputs: each gets its own multiply (a variable
    written twice broke paddleslim's region builder, BRECQ and QDrop)."""
    files = resolve_model_files(pico_cfg.model_dir)
    equalize_depthwise_inputs(files, tmp_path, list(calibration_loader(pico_cfg, 4, 1, progress=False)))
    ops = read_program(ModelFiles(tmp_path, "model.pdmodel", "model.pdiparams")).ops
    written: dict[str, int] = {}
    for op in ops:
        if op.type != "fetch":
            for names in op.outputs.values():
                for name in names:
                    written[name] = written.get(name, 0) + 1
    assert {name: n for name, n in written.items() if n > 1} == {}
    assert sum(op.type == "elementwise_mul" for op in ops) >= sum(op.type == "depthwise_conv2d" for op in ops)


def test_fast_region_builder_finds_paddleslims_regions():
    import paddle
    import paddleslim.quant.reconstruction_quantization as rq

    from ptqdet.paddle_static import static_mode
    from ptqdet.recon import fast_reconstruction

    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [1, 4, 8, 8], "float32")
            y = paddle.nn.functional.relu(paddle.static.nn.conv2d(x, 8, 3, padding=1))
            a = paddle.static.nn.conv2d(y, 8, 3, padding=1, groups=8)  # two branches read y
            b = paddle.static.nn.conv2d(y, 8, 1)
            z = paddle.static.nn.conv2d(paddle.nn.functional.relu(a + b * b), 4, 1)
            paddle.nn.functional.sigmoid(z)
        expected = rq.RegionBuilder(main)._create_regions(limit=6)
        with fast_reconstruction():
            found = rq.RegionBuilder(main)._create_regions(limit=6)
    assert found == expected and len(expected[0]) > 1
