import numpy as np
import pytest

from ptqdet.config import NMSSettings
from ptqdet.postprocess import multiclass_nms, to_detections


def test_nms_suppresses_overlaps_within_a_class_only():
    boxes = np.array([[[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 150, 150]]], np.float32)
    scores = np.zeros((1, 2, 3), np.float32)
    scores[0, 0] = [0.9, 0.8, 0.0]  # class 0: two overlapping boxes
    scores[0, 1] = [0.0, 0.7, 0.6]  # class 1: overlaps box 1 of class 0, and a far box
    bbox, num = multiclass_nms(boxes, scores, NMSSettings(score_threshold=0.05, nms_threshold=0.5))
    assert num.tolist() == [3]
    got = sorted((int(r[0]), round(float(r[1]), 2)) for r in bbox)
    assert got == [(0, 0.9), (1, 0.6), (1, 0.7)]


def test_nms_respects_keep_top_k_and_batches():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (2, 200, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 20], -1)
    scores = rng.uniform(0, 1, (2, 3, 200)).astype(np.float32)
    bbox, num = multiclass_nms(boxes, scores, NMSSettings(score_threshold=0.01, nms_threshold=0.7, keep_top_k=50))
    assert num.tolist() == [50, 50] and bbox.shape == (100, 6)


def test_wrong_output_shapes_are_explained():
    with pytest.raises(ValueError, match="exclude_nms"):
        to_detections([np.zeros((5, 6))], nms_outside=True, nms=NMSSettings())
    with pytest.raises(ValueError, match="arch: PPYOLOE"):
        to_detections([np.zeros((1, 10, 4)), np.zeros((1, 3, 10))], nms_outside=False, nms=NMSSettings())


def test_ttfnet_onnx_bbox_with_a_kept_axis_reads_as_rows():
    rows = np.arange(12, dtype=np.float32).reshape(2, 6)
    det = to_detections([rows[:, None, :], np.array([2])], nms_outside=False, nms=NMSSettings())
    assert det["bbox"].shape == (2, 6) and np.array_equal(det["bbox"], rows)
    assert det["bbox_num"].dtype == np.int32
