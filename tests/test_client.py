"""PaddleDetection's own deployment client (ptqdet/client.py) gives the mAP ptqdet reports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from ptqdet.client import ClientError, DatasetImages, default_client_dir, link_images, to_dataset_records

CLIENT = default_client_dir()
TOLERANCE = 0.003  # 0.3 point


def client_or_skip() -> Path:
    if not (CLIENT / "infer.py").is_file():
        pytest.skip(f"{CLIENT / 'infer.py'} not found")
    return CLIENT


def _images(tmp_path: Path) -> DatasetImages:
    files = {}
    for name in ("b.jpg", "a.jpg"):
        (tmp_path / "src" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(name.encode())
        files[name] = tmp_path / "src" / name
    return DatasetImages(anno_file=tmp_path / "anno.json", files=files, image_ids={"b.jpg": 42, "a.jpg": 7},
                         clsid2catid={0: 1, 1: 3, 2: 90})


def test_records_are_mapped_by_file_name_and_category_order(tmp_path):
    images = _images(tmp_path)
    client = [{"image_id": 0, "category_id": 2, "file_name": "a.jpg", "bbox": [1, 2, 3, 4], "score": 0.9},
              {"image_id": 1, "category_id": 0, "file_name": "b.jpg", "bbox": [5, 6, 7, 8], "score": 0.5}]
    assert to_dataset_records(client, images) == [
        {"image_id": 7, "category_id": 90, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9},
        {"image_id": 42, "category_id": 1, "bbox": [5.0, 6.0, 7.0, 8.0], "score": 0.5}]
    with pytest.raises(ClientError, match="'c.jpg', which is not an evaluation image"):
        to_dataset_records([{**client[0], "file_name": "c.jpg"}], images)
    with pytest.raises(ClientError, match="class index 3; the dataset has 3 classes"):
        to_dataset_records([{**client[0], "category_id": 3}], images)


def test_image_folder_holds_exactly_the_evaluation_images(tmp_path):
    images = _images(tmp_path)
    folder = link_images(images.files, tmp_path / "linked")
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.jpg"]
    assert (folder / "a.jpg").read_bytes() == b"a.jpg"


def test_client_imports_work_in_this_venv():
    client = client_or_skip()
    proc = subprocess.run([sys.executable, str(client / "infer.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--enable_mkldnn" in proc.stdout


# ---- the client's mAP vs ptqdet's eval.py mAP (same images, annotation file, CPU runtime) ----

def _compare(config: Path, model_dir: Path, mkldnn: bool) -> tuple[float, float]:
    from ptqdet.client import client_map
    from ptqdet.config import load_config
    from ptqdet.files import resolve_model_files
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model

    cfg = load_config(config)
    files = resolve_model_files(model_dir, cfg.model_filename, cfg.params_filename)
    ours = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(mkldnn=mkldnn), progress=False)).result
    theirs = client_map(cfg, model_dir, mkldnn)
    assert theirs.images == ours.images
    return ours.map, theirs.map


DEMO_CONFIG = ROOT / "configs" / "demo" / "picodet_s_ptq.yaml"


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory) -> Path:
    """The demo PicoDet-s quantized as post_quant.py does with configs/demo/picodet_s_ptq.yaml."""
    from ptqdet.config import load_config
    from ptqdet.quantize import quantize

    out = tmp_path_factory.mktemp("client") / "picodet_s_int8"
    quantize(load_config(DEMO_CONFIG), out, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_client_matches_ptqdet_demo_fp32(mkldnn):
    client_or_skip()
    ours, theirs = _compare(DEMO_CONFIG, ROOT / "demo" / "models" / "picodet_s_shapes", mkldnn)
    assert ours > 0.4
    assert theirs == pytest.approx(ours, abs=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_client_matches_ptqdet_demo_int8(demo_int8, mkldnn):
    client_or_skip()
    ours, theirs = _compare(DEMO_CONFIG, demo_int8, mkldnn)
    assert ours > 0.3
    assert theirs == pytest.approx(ours, abs=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_client_matches_ptqdet_real_fp32(mkldnn):
    client_or_skip()
    from test_real_model import CONFIG, FP32_MAP, coco_mini_or_skip, real_model_or_skip

    coco_mini_or_skip()
    ours, theirs = _compare(CONFIG, real_model_or_skip(), mkldnn)
    assert ours == pytest.approx(FP32_MAP, abs=TOLERANCE)
    assert theirs == pytest.approx(ours, abs=TOLERANCE)
