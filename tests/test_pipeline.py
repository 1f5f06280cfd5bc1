"""End-to-end on the demo models: PTQ, eval, agreement with ppdet's own evaluation."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_config
from ptqdet.config import load_config
from ptqdet.files import ModelFiles, resolve_model_files
from ptqdet.model import BackendOptions
from ptqdet.pipeline import EvalRequest, evaluate_model
from ptqdet.quantize import layer_weights, quantize, quantized_weights

pytestmark = pytest.mark.slow


def test_ptq_quantizes_convs_and_skips_listed_layers(tmp_path):
    skip = ["conv2d_1.w_0", "conv2d_3.w_0"]
    path = write_config(tmp_path, f"_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nskip_tensor_list: {skip}\n")
    cfg = load_config(path)
    result = quantize(cfg, tmp_path / "int8", progress=False)
    out = ModelFiles(tmp_path / "int8", "model.pdmodel", "model.pdiparams")
    quantized = quantized_weights(out)
    all_layers = set(layer_weights(resolve_model_files(cfg.model_dir), cfg.ptq.quantizable_op_type))
    assert quantized == all_layers - set(skip)
    assert len(quantized) > 50
    assert (tmp_path / "int8" / "infer_cfg.yml").is_file()
    assert sorted(result.quantized_layers) == sorted(quantized)


@pytest.fixture
def yoloe_int8(deploy_models):
    """The demo PP-YOLOE-s' INT8 model (QDQ form, made once per test run: conftest) and its FP32 mAP."""
    cfg, models, _ = deploy_models["ppyoloe_s"]
    fp32 = evaluate_model(cfg, EvalRequest(models.fp32, progress=False)).result
    return fp32.map, models.int8


def test_ppyoloe_int8_map_stays_close_to_fp32(yoloe_cfg, yoloe_int8):
    """The quantized model itself (its fake-quant graph, as Paddle Inference runs it on FP32
    kernels) stays within 1 mAP point of FP32. Measured: 32.2 -> 32.1."""
    fp32, int8_files = yoloe_int8
    simulated = EvalRequest(int8_files, options=BackendOptions(mkldnn=False), progress=False)
    int8 = evaluate_model(yoloe_cfg, simulated).result
    assert fp32 >= 0.30
    assert abs(fp32 - int8.map) <= 0.01, (fp32, int8.map)  # 1 mAP point


def test_onednn_int8_runtime_keeps_the_quantized_models_map(yoloe_cfg, yoloe_int8):
    """On oneDNN INT8 kernels (the CPU runtime) the model keeps its mAP: INT8 runs only on the
    quantized layer types. Paddle's default placement also quantized concat, elementwise and
    interpolation ops with propagated scales: 22.6 on the same model."""
    fp32, int8_files = yoloe_int8
    from ptqdet.backends import open_backend
    from ptqdet.model import BackendOptions

    assert open_backend("paddle", int8_files, BackendOptions(threads=2)).mode == "oneDNN INT8"
    int8 = evaluate_model(yoloe_cfg, EvalRequest(int8_files, progress=False)).result
    assert abs(fp32 - int8.map) <= 0.01, (fp32, int8.map)


def test_onednn_int8_runs_only_the_quantized_layer_types(yoloe_cfg, yoloe_int8):
    from ptqdet.backends import open_backend
    from ptqdet.model import BackendOptions
    from ptqdet.program import quantized_layer_types

    _, int8_files = yoloe_int8
    assert quantized_layer_types(int8_files) == set(yoloe_cfg.ptq.quantizable_op_type) & {"conv2d"}
    assert quantized_layer_types(resolve_model_files(yoloe_cfg.model_dir)) == set()
    predictor = open_backend("paddle", int8_files, BackendOptions(threads=2))
    assert predictor.int8_op_types() == {"conv2d", "fused_conv2d"}
    assert open_backend("paddle", int8_files, BackendOptions(threads=2, int8_ops=())).int8_op_types() == set()


def _ppdet_reference_eval(cfg_path):
    """The reference example's loop: ppdet's own reader (thread, batching) and COCOMetric."""
    import tempfile

    import paddle
    import paddle.inference as pi
    from ppdet.core.workspace import create
    from ppdet.core.workspace import load_config as ppdet_load
    from ppdet.metrics import COCOMetric

    from ptqdet.config import _reset_ppdet_workspace
    _reset_ppdet_workspace()
    # The reference runs in dygraph mode; an earlier in-process test may have left paddle static,
    # where ppdet's reader yields LoDTensors that its COCOMetric cannot read.
    paddle.disable_static()
    cfg = ppdet_load(str(cfg_path))
    config = pi.Config(f"{cfg['model_dir']}/model.pdmodel", f"{cfg['model_dir']}/model.pdiparams")
    config.disable_gpu()
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    dataset = cfg["EvalDataset"]
    loader = create("EvalReader")(dataset, 0, return_list=True)
    clsid2catid = {v: k for k, v in dataset.catid2clsid.items()}
    metric = COCOMetric(anno_file=dataset.get_anno(), clsid2catid=clsid2catid, output_eval=tempfile.mkdtemp(), bias=0)
    for data in loader:
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(np.array(data[name]))
        predictor.run()
        outs = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
        metric.update({k: np.array(v) for k, v in data.items()}, {"bbox": outs[0], "bbox_num": outs[1]})
    metric.accumulate()
    return metric.get_results()["bbox"][0]


def test_eval_agrees_with_ppdet_reference_loop():
    cfg_path = ROOT / "configs/demo/picodet_s_ptq.yaml"
    cfg = load_config(cfg_path)
    ours = evaluate_model(cfg, EvalRequest(resolve_model_files(cfg.model_dir), options=BackendOptions(mkldnn=False),
                                           progress=False)).result
    reference = _ppdet_reference_eval(cfg_path)
    assert ours.map == pytest.approx(reference, abs=1e-3)
    assert ours.images == 200


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)


def test_scripts_end_to_end(tmp_path):
    out = tmp_path / "int8"
    r = _run("post_quant.py", "--config_path", "configs/demo/picodet_s_ptq.yaml", "--save_dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layers quantized" in r.stdout
    assert "calibrating" not in r.stderr and "Adding quant" not in r.stderr  # --quiet: Paddle's bars too
    report = json.loads((out / "ptq_report.json").read_text())
    assert len(report["quantized_layers"]) > 50
    r = _run("eval.py", "--config_path", "configs/demo/picodet_s_ptq.yaml", "--model_dir", str(out),
             "--output", str(tmp_path / "eval.json"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["precision"] == "INT8" and data["eval"]["images"] == 200
    assert data["runtime"] in r.stdout  # the printed table names the runtime of its number


def test_deploy_fake_quant_config_is_refused_before_calibration(tmp_path):
    """--deploy openvino needs the QDQ form: refused in one line before any work, nothing written."""
    cfg = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\nPTQ:\n  onnx_format: False\n")
    out = tmp_path / "int8"
    r = _run("post_quant.py", "--config_path", str(cfg), "--save_dir", str(out), "--deploy", "openvino", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "onnx_format" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
