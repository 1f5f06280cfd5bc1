import json

import numpy as np
import pytest

from ptqdet.data import build_source
from ptqdet.metrics import MetricSession


def _ground_truth_detections(cfg, source, batch):
    coco = source.dataset.get_anno()
    anns = json.loads(open(coco).read())["annotations"]
    catid2clsid = source.dataset.catid2clsid
    rows, nums = [], []
    for im_id in batch["im_id"].ravel():
        boxes = [a for a in anns if a["image_id"] == int(im_id)]
        for a in boxes:
            x, y, w, h = a["bbox"]
            rows.append([catid2clsid[a["category_id"]], 0.99, x, y, x + w, y + h])
        nums.append(len(boxes))
    return {"bbox": np.array(rows, np.float32).reshape(-1, 6), "bbox_num": np.array(nums, np.int32)}


def test_perfect_detections_score_map_one_and_none_score_zero(pico_cfg):
    source = build_source(pico_cfg, "FastEvalDataset")
    perfect, empty = MetricSession(pico_cfg, source), MetricSession(pico_cfg, source)
    for batch in source.batches():
        perfect.update(batch, _ground_truth_detections(pico_cfg, source, batch))
        n = len(batch["im_id"])
        empty.update(batch, {"bbox": np.zeros((0, 6), np.float32), "bbox_num": np.zeros(n, np.int32)})
    value, stats = perfect.result()
    assert value == pytest.approx(1.0, abs=1e-6)
    assert stats["mAP50"] == pytest.approx(1.0, abs=1e-6)
    assert empty.result()[0] == 0.0


def test_batches_hold_model_inputs_at_eval_size(pico_cfg):
    source = build_source(pico_cfg, "FastEvalDataset")
    assert len(source) == 40
    batch = next(source.batches())
    assert batch["image"].shape == (8, 3, 256, 256)
    assert batch["scale_factor"].shape == (8, 2)
