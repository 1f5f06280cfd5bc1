"""Calibration reads only images: a COCO json without boxes and a plain image folder both work,
and an image that cannot be decoded is skipped with a warning naming it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import DEMO_CONFIGS, MODELS, coco_slice, run_script
from ptqdet.files import resolve_model_files
from ptqdet.program import check_model, is_quantized

pytestmark = pytest.mark.slow


def _unlabeled_coco(tmp: Path) -> str:
    """Five calibration images with an annotation file that lists them and has no boxes."""
    anno = coco_slice("calib", tmp / "data", 5)
    coco = json.loads(anno.read_text())
    coco["annotations"] = []
    anno.write_text(json.dumps(coco))
    return f"!COCODataSet {{image_dir: calib, anno_path: calib.json, dataset_dir: {tmp / 'data'}}}"


def _image_folder(tmp: Path) -> str:
    """Five calibration images in a folder, no annotation file at all."""
    coco_slice("calib", tmp / "data", 5)
    (tmp / "data" / "calib.json").unlink()
    return f"!ImageFolder {{image_dir: calib, dataset_dir: {tmp / 'data'}}}"


@pytest.mark.parametrize("dataset", [_unlabeled_coco, _image_folder], ids=["coco json without boxes", "image folder"])
def test_calibrates_from_unlabeled_images(tmp_path, capfd, dataset):
    train = dataset(tmp_path)
    bad = sorted((tmp_path / "data" / "calib").iterdir())[1]
    bad.write_bytes(b"not an image" * 10)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_BASE_: ['{DEMO_CONFIGS / 'picodet_s_ptq.yaml'}']\nTrainDataset: {train}\n"
                   "PTQ:\n  batch_size: 2\n  batch_nums: 2\n")
    out = tmp_path / "int8"
    shutil.copytree(MODELS / "ppyoloe_s_shapes", out)  # another model: replaced whole, never mixed
    (out / "stale.txt").write_text("from an older run")

    code, stdout, err = run_script("post_quant.py", ["--config_path", cfg, "--save_dir", out, "--quiet"], capfd)

    assert code == 0, err[-2000:]
    assert f"skipped an image that cannot be decoded: {bad}" in err
    assert "skipped 1 image(s)" in err
    assert sorted(p.name for p in out.iterdir()) == ["infer_cfg.yml", "model.pdiparams", "model.pdmodel",
                                                     "ptq_report.json"]
    files = resolve_model_files(out)
    assert is_quantized(files)
    assert check_model(files, ["image", "scale_factor"], nms_outside=False).has_nms  # the PicoDet-s, not PP-YOLOE
    assert json.loads((out / "ptq_report.json").read_text())["ptq"]["batch_nums"] == 2
