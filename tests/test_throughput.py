"""ptqdet.throughput on the demo models' exports (made once per test run: conftest)."""
import pytest

from ptqdet.data import latency_feed
from ptqdet.throughput import THROUGHPUT_HEADERS, batched, measure_throughput, throughput_table

pytestmark = pytest.mark.slow


def test_throughput_rows_per_batch_and_model(deploy_models):
    cfg, models, _ = deploy_models["ppyoloe_s"]
    feed = latency_feed(cfg)
    assert batched(feed, 3)["image"].shape[0] == 3
    specs = {"FP32 f32": (models.onnx["FP32"], "f32"), "INT8": (models.onnx["INT8"], "f32")}
    rows = measure_throughput(specs, [1, 2], threads=2, feed=feed, rounds=2, seconds=0.3, progress=False)
    assert [(r.model, r.batch) for r in rows] == [("FP32 f32", 1), ("INT8", 1), ("FP32 f32", 2), ("INT8", 2)]
    for row in rows:
        assert row.error is None and len(row.images_per_s) == 2 and row.median > 0
        assert row.streams >= 1 and row.requests >= 1 and row.runtime.startswith("OpenVINO")
    assert "QDQ INT8" in rows[1].runtime
    table = throughput_table("ppyoloe_s", rows)
    assert len(table) == 4 and all(len(r) == len(THROUGHPUT_HEADERS) for r in table)
    assert table[0][7] == "1.00" and float(table[1][7]) > 0


def test_a_batch_1_export_says_why_it_has_no_larger_batch(deploy_models):
    """PicoDet's export fixes scale_factor's batch to 1: batch 2 is a row with the reason."""
    cfg, models, _ = deploy_models["picodet_s"]
    rows = measure_throughput({"INT8": (models.onnx["INT8"], "f32")}, [1, 2], threads=1, feed=latency_feed(cfg),
                              rounds=1, seconds=0.2, progress=False)
    assert rows[0].error is None and rows[0].median > 0
    assert "batch 1 only" in rows[1].error and rows[1].median is None
