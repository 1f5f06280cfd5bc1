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


def test_nms_drops_the_background_class():
    """SSD's NMS (background_label inside the classes): that class's scores never become boxes."""
    boxes = np.array([[[10, 10, 50, 50], [100, 100, 150, 150]]], np.float32)
    scores = np.array([[[0.9, 0.1], [0.2, 0.95]]], np.float32)  # class 1 (the background) scores high
    bbox, num = multiclass_nms(boxes, scores, NMSSettings(score_threshold=0.05, nms_threshold=0.5,
                                                          background_label=1))
    assert num.tolist() == [2] and set(bbox[:, 0].astype(int).tolist()) == {0}


OPENVINO_TIED_SCORES = """
import numpy as np, openvino as ov, openvino.opset9 as opset
from ptqdet.backends import openvino_nms
from ptqdet.config import NMSSettings
nms = NMSSettings(score_threshold=0.01, nms_threshold=0.45, nms_top_k=400, keep_top_k=200, background_label=6)
boxes, scores = opset.parameter([-1, -1, 4], np.float32), opset.parameter([-1, 7, -1], np.float32)
node = openvino_nms(boxes, scores, nms)
compiled = ov.Core().compile_model(ov.Model([node.output(0), node.output(2)], [boxes, scores]), "CPU",
                                   {"INFERENCE_NUM_THREADS": 1})
rng = np.random.default_rng(0)
xy = rng.random((4, 540, 2)).astype(np.float32) * 150
b = np.concatenate([xy, xy + 10], -1)
s = (1.0 - rng.random((4, 7, 540)) * 3e-6).astype(np.float32)  # saturated: every score within 3e-6 of 1
for _ in range(3):
    out = compiled({0: b, 1: s})
bbox, num = out[0], out[1]
assert num.tolist() == [200] * 4 and set(bbox[:, 0].astype(int).tolist()) <= set(range(6))
assert np.abs(bbox[:, 1] - 1.0).max() <= 4e-6
print("ok")
"""


def test_openvino_nms_survives_scores_tied_across_classes():
    """OpenVINO 2026.4's MulticlassNms corrupts the heap on scores within 1e-6 of each other across
    classes (its sort's comparator is no strict order); ptqdet snaps them to a grid first. Run in a
    child: the unguarded op crashes the process on these scores."""
    pytest.importorskip("openvino")
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", OPENVINO_TIED_SCORES], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
