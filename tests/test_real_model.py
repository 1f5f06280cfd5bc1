"""The real COCO PicoDet-s (picodet_s_416_coco_lcnet) on coco_mini (../shared/coco_mini).

Skipped when coco_mini or the model is absent. dataset/coco_mini is laid out here as
`make coco-mini` does (same function) when missing. The model: ./picodet_s_416_coco_lcnet
(`make real-model`), else the shared copy.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from ptqdet.annotations import prepare_coco_mini, write_split
from ptqdet.fetch import is_present

SHARED = ROOT.parent / "shared"
COCO_MINI_SRC = SHARED / "coco_mini"
COCO_MINI = ROOT / "dataset" / "coco_mini"
CONFIG = ROOT / "configs" / "coco_mini" / "picodet_s_ptq.yaml"
MODEL_DIRS = (ROOT / "picodet_s_416_coco_lcnet", SHARED / "models" / "picodet_s_416_coco_lcnet")
CALIB_IMAGES = 64

# FP32 mAP (COCO mAP@[.5:.95], 0-1) of the real PicoDet-s on the coco_mini evaluation split
# through ptqdet (Paddle Inference, oneDNN FP32), measured 2026-12-02:
#   .venv/bin/python eval.py --config_path configs/coco_mini/picodet_s_ptq.yaml
# 35.8 mAP (0.35798), mAP50 49.7, on 128 images: ppdet's COCODataSet skips the one evaluation
# image without any box (000000058636.jpg); the other 128 are evaluated.
FP32_MAP = 0.3580
FP32_IMAGES = 128
TOLERANCE = 0.001  # 0.1 point


def coco_mini_or_skip() -> Path:
    """dataset/coco_mini, laid out from ../shared/coco_mini when missing."""
    if not (COCO_MINI_SRC / "train2017").is_dir():
        pytest.skip("../shared/coco_mini not found")
    if not (COCO_MINI / "annotations" / "instances_eval.json").is_file():
        prepare_coco_mini(COCO_MINI_SRC, COCO_MINI, calib=CALIB_IMAGES)
    return COCO_MINI


def real_model_or_skip() -> Path:
    for folder in MODEL_DIRS:
        if is_present(folder):
            return folder
    pytest.skip("picodet_s_416_coco_lcnet not found (make real-model)")


def _images(anno: Path) -> dict[int, str]:
    return {im["id"]: im["file_name"] for im in json.loads(anno.read_text())["images"]}


def test_calibration_and_evaluation_images_are_disjoint():
    coco_mini_or_skip()
    from ptqdet.config import load_config
    from ptqdet.data import dataset_paths

    cfg = load_config(CONFIG)
    calib = _images(dataset_paths(cfg.ppdet["TrainDataset"])["anno_path"])
    evals = _images(dataset_paths(cfg.ppdet["EvalDataset"])["anno_path"])
    fast = _images(dataset_paths(cfg.ppdet["FastEvalDataset"])["anno_path"])
    everything = _images(COCO_MINI_SRC / "annotations" / "instances_train2017_mini.json")
    assert len(calib) == CALIB_IMAGES
    assert not set(calib) & set(evals)
    assert not set(calib.values()) & set(evals.values())  # not the same file under another id either
    assert set(calib) | set(evals) == set(everything)
    assert set(fast) <= set(evals)
    # and both image folders are the same one, so same file name = same image
    assert dataset_paths(cfg.ppdet["TrainDataset"])["image_dir"].resolve() == \
        dataset_paths(cfg.ppdet["EvalDataset"])["image_dir"].resolve()


def test_split_is_what_make_coco_mini_writes(tmp_path):
    """The files in dataset/coco_mini are those the shared function writes (nothing stale)."""
    coco_mini_or_skip()
    out = prepare_coco_mini(COCO_MINI_SRC, tmp_path / "coco_mini", calib=CALIB_IMAGES)
    for name in ("instances_calib.json", "instances_eval.json", "instances_eval_fast.json"):
        assert (out / "annotations" / name).read_bytes() == (COCO_MINI / "annotations" / name).read_bytes(), name
    assert (out / "train2017").resolve() == (COCO_MINI_SRC / "train2017").resolve()
    with pytest.raises(ValueError, match="cannot take 193"):
        write_split(COCO_MINI_SRC / "annotations" / "instances_train2017_mini.json",
                    tmp_path / "a.json", tmp_path / "b.json", 193)


@pytest.mark.slow
def test_fp32_map_of_real_picodet_on_coco_mini_eval_split():
    coco_mini_or_skip()
    model = real_model_or_skip()
    from ptqdet.config import load_config
    from ptqdet.files import resolve_model_files
    from ptqdet.pipeline import EvalRequest, evaluate_model

    cfg = load_config(CONFIG)
    files = resolve_model_files(model, cfg.model_filename, cfg.params_filename)
    result = evaluate_model(cfg, EvalRequest(files, progress=False)).result
    assert result.images == FP32_IMAGES
    assert result.map == pytest.approx(FP32_MAP, abs=TOLERANCE)


@pytest.mark.slow
def test_real_picodet_one_command_to_openvino_every_conv_int8_within_one_point_of_fp32(tmp_path):
    """The README's one command for one's own model (post_quant.py --eval --deploy openvino) on
    the real PicoDet-s: the INT8 model, its OpenVINO form and the FP32/INT8 table on OpenVINO,
    every row naming its runtime. The deployment recipe (depthwise input equalization, no layer
    in float) keeps it within 1 mAP point of FP32, on OpenVINO and as the quantized graph
    computes it (plain PTQ: 0.1)."""
    import subprocess
    import sys

    coco_mini_or_skip()
    model = real_model_or_skip()
    from ptqdet.config import load_config
    from ptqdet.files import resolve_model_files
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model
    from ptqdet.quantize import quantized_weights

    config = tmp_path / "my_model_ptq.yaml"
    config.write_text(f"_BASE_: ['{CONFIG}']\nmodel_dir: {model}\n")
    cfg = load_config(config)
    assert cfg.ptq.onnx_format and cfg.ptq.equalize_depthwise and not cfg.skip_tensor_list and not cfg.skip_op_types
    out = tmp_path / "int8"
    r = subprocess.run([sys.executable, str(ROOT / "post_quant.py"), "--config_path", str(config), "--save_dir",
                        str(out), "--eval", "--deploy", "openvino", "--quiet"], capture_output=True, text=True,
                       cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "openvino" / "model.onnx").is_file() and (out / "deploy_report.md").is_file()
    rows = {row["precision"]: row for row in json.loads((out / "ptq_report.json").read_text())["deploy"]["rows"]}
    assert set(rows) == {"FP32", "INT8"}
    for row in rows.values():
        assert row["runtime"].startswith("OpenVINO") and row["runtime"] in r.stdout and row["median_ms"] > 0
    assert "QDQ INT8" in rows["INT8"]["runtime"] and "QDQ" not in rows["FP32"]["runtime"]
    int8 = resolve_model_files(out)
    assert len(quantized_weights(int8)) == 98
    assert rows["FP32"]["map"] == pytest.approx(FP32_MAP, abs=0.005)  # OpenVINO f32 computes the FP32 model
    # the bar (issue 11) is on the recommended runtime: OpenVINO within 1 point of FP32
    openvino = rows["INT8"]["map"]
    assert openvino >= FP32_MAP - 0.010
    simulated = evaluate_model(cfg, EvalRequest(int8, options=BackendOptions(mkldnn=False), progress=False)).result
    # the QDQ graph on Paddle's FP32 kernels depends on the CPU through calibration: measured
    # 35.1 (OpenVINO 35.4) on an Intel Xeon with AMX, 34.75 (OpenVINO 35.5) on an AMD EPYC
    assert simulated.map >= FP32_MAP - 0.013
    assert abs(openvino - simulated.map) <= 0.009
