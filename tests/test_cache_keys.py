"""Cache keys that cannot go stale: the PTQ cache (benchmark.quantize_cached, the analysis'
deployment models) and the analysis' work folder are keyed by everything their results depend
on. Each input is changed in turn: the key changes; an unchanged input keeps it. No model runs."""
import dataclasses
import os
import shutil

import pytest

from conftest import MODELS, coco_slice, write_config
from ptqdet.analysis.context import cache_key
from ptqdet.benchmark import ptq_cache_key
from ptqdet.config import PTQSettings, load_config
from ptqdet.files import resolve_model_files


@pytest.fixture
def setup(tmp_path):
    """A config whose model, calibration and evaluation images are copies in tmp_path."""
    model = tmp_path / "model"
    shutil.copytree(MODELS / "picodet_s_shapes", model)
    data = tmp_path / "data"
    calib = coco_slice("calib", data, 4)
    val = coco_slice("val", data, 4)
    path = write_config(tmp_path, f"""_BASE_: ['@DEMO@/picodet_s_ptq.yaml']
model_dir: {model}
TrainDataset:
  !COCODataSet
    image_dir: calib
    anno_path: {calib}
    dataset_dir: {data}
EvalDataset:
  !COCODataSet
    image_dir: val
    anno_path: {val}
    dataset_dir: {data}
FastEvalDataset:
  !COCODataSet
    image_dir: val
    anno_path: {val}
    dataset_dir: {data}
""")
    return path, model, data


def _keys(path):
    cfg = load_config(path)
    return ptq_cache_key(cfg, resolve_model_files(cfg.model_dir)), cache_key(cfg, {})


def _touch_changed(image):
    """New bytes (and a new modification time) for one image."""
    image.write_bytes(image.read_bytes() + b"\0")
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_unchanged_inputs_keep_both_keys(setup):
    path, _, _ = setup
    assert _keys(path) == _keys(path)


def test_model_bytes_change_both_keys(setup):
    path, model, _ = setup
    before = _keys(path)
    params = model / "model.pdiparams"
    data = bytearray(params.read_bytes())
    data[-1] ^= 1
    params.write_bytes(bytes(data))
    after = _keys(path)
    assert after[0] != before[0] and after[1] != before[1]


CHANGED = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 0.125, str: lambda v: v + "_other",
           list: lambda v: [*v, "mul"]}


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(PTQSettings)])
def test_each_ptq_key_changes_both_keys(setup, key):
    path, _, _ = setup
    cfg = load_config(path)
    files = resolve_model_files(cfg.model_dir)
    value = getattr(cfg.ptq, key)
    changed = dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, **{key: CHANGED[type(value)](value)}))
    assert ptq_cache_key(changed, files) != ptq_cache_key(cfg, files)
    assert cache_key(changed, {}) != cache_key(cfg, {})


def test_skip_op_types_and_skip_list_change_both_keys(setup):
    path, _, _ = setup
    cfg = load_config(path)
    files = resolve_model_files(cfg.model_dir)
    for changed in (dataclasses.replace(cfg, skip_op_types=["depthwise_conv2d"]),
                    dataclasses.replace(cfg, skip_tensor_list=["conv2d_1.w_0"])):
        assert ptq_cache_key(changed, files) != ptq_cache_key(cfg, files)
        assert cache_key(changed, {}) != cache_key(cfg, {})


def test_a_calibration_image_changes_both_keys(setup):
    path, _, data = setup
    before = _keys(path)
    _touch_changed(sorted((data / "calib").iterdir())[0])
    after = _keys(path)
    assert after[0] != before[0] and after[1] != before[1]


def test_an_evaluation_image_changes_the_analysis_key_only(setup):
    """The INT8 model does not depend on the evaluation images (its cache is kept); the
    analysis' results do."""
    path, _, data = setup
    before = _keys(path)
    _touch_changed(sorted((data / "val").iterdir())[0])
    after = _keys(path)
    assert after[0] == before[0] and after[1] != before[1]


def test_an_annotation_change_changes_the_analysis_key(setup):
    path, _, data = setup
    before = _keys(path)
    anno = data / "val.json"
    anno.write_text(anno.read_text().replace('"iscrowd": 0', '"iscrowd": 1', 1))
    assert _keys(path)[1] != before[1]
