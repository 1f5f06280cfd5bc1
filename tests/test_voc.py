"""VOC end to end: eval.py with metric: VOC on a !VOCDataSet gives PaddleDetection's VOC mAP."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_CONFIGS, MODELS, run_script, write_voc

pytestmark = pytest.mark.slow

IMAGES = 24


def _config(tmp: Path, voc: Path, ppdet_style: bool) -> Path:
    """ptqdet's config as a user writes it; ppdet_style: with the data_fields and collate_batch
    that PaddleDetection's own VOC configs need (for its reference loop)."""
    fields = "data_fields: [image, gt_bbox, gt_class, difficult], " if ppdet_style else ""
    text = (f"_BASE_: ['{DEMO_CONFIGS / 'picodet_s_ptq.yaml'}']\nmetric: VOC\n"
            f"EvalDataset: !VOCDataSet {{{fields}dataset_dir: {voc}, anno_path: val.txt, "
            f"label_list: label_list.txt}}\n")
    if ppdet_style:
        text += "EvalReader:\n  collate_batch: false\n"
    path = tmp / ("ppdet.yaml" if ppdet_style else "cfg.yaml")
    path.write_text(text)
    return path


def _ppdet_voc_map(cfg_path: Path) -> float:
    """PaddleDetection's VOC evaluation: its reader (thread, batching), the exported model on
    Paddle Inference, and its VOCMetric."""
    import paddle
    import paddle.inference as pi
    from ppdet.core.workspace import create
    from ppdet.core.workspace import load_config as ppdet_load
    from ppdet.metrics import VOCMetric

    from ptqdet.config import _reset_ppdet_workspace

    _reset_ppdet_workspace()
    paddle.disable_static()
    cfg = ppdet_load(str(cfg_path))
    model = MODELS / "picodet_s_shapes"
    config = pi.Config(str(model / "model.pdmodel"), str(model / "model.pdiparams"))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    dataset = cfg["EvalDataset"]
    loader = create("EvalReader")(dataset, 0, return_list=True)
    metric = VOCMetric(label_list=dataset.get_label_list(), class_num=6, map_type="11point")
    for data in loader:
        for name in predictor.get_input_names():
            predictor.get_input_handle(name).copy_from_cpu(np.array(data[name]))
        predictor.run()
        outs = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
        metric.update(data, {"bbox": outs[0], "bbox_num": outs[1]})
    metric.accumulate()
    return float(metric.get_results()["bbox"][0])


def test_voc_helper_writes_a_pascal_voc_dataset(tmp_path):
    voc = write_voc(tmp_path / "voc", 3)
    lines = (voc / "val.txt").read_text().splitlines()
    assert len(lines) == 3 and all((voc / part).is_file() for line in lines for part in line.split())
    assert (voc / "label_list.txt").read_text().split() == ["circle", "rectangle", "triangle", "star", "cross", "ring"]
    objects = ET.parse(voc / lines[0].split()[1]).getroot().findall("object")
    assert objects and all(o.find("bndbox/xmax") is not None for o in objects)


def test_eval_voc_gives_paddledetections_voc_map(tmp_path, capfd):
    voc = write_voc(tmp_path / "voc", IMAGES)
    out = tmp_path / "eval.json"
    code, stdout, err = run_script("eval.py", ["--config_path", _config(tmp_path, voc, ppdet_style=False),
                                               "--output", out, "--no_mkldnn", "--quiet"], capfd)
    assert code == 0, err[-2000:]
    ours = json.loads(out.read_text())["eval"]
    assert ours["images"] == IMAGES
    reference = _ppdet_voc_map(_config(tmp_path, voc, ppdet_style=True))
    assert 0.3 < reference <= 1  # the demo model finds the shapes: a real mAP, not an empty one
    assert ours["map"] == pytest.approx(reference, abs=1e-4)
    assert ours["stats"]["mAP50"] == ours["map"]
