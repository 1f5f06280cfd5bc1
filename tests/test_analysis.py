"""analysis.py on the demo PicoDet-s with a small FastEvalDataset."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ptqdet.annotations import write_subset
from ptqdet.config import load_config
from conftest import DEMO_DATA, ROOT, write_config

pytestmark = pytest.mark.slow


def test_revert_all_equals_fp32_and_revert_none_equals_int8(tmp_path, pico_cfg):
    from ptqdet.analysis.graph import QuantGraph
    from ptqdet.data import build_source, feed_from_batch
    from ptqdet.model import Predictor, PredictorOptions, resolve_model_files
    from ptqdet.quantize import quantize

    quantize(pico_cfg, tmp_path / "int8", progress=False)
    fp32_files = resolve_model_files(pico_cfg.model_dir)
    graph = QuantGraph(resolve_model_files(tmp_path / "int8"), fp32_files)
    feed = feed_from_batch(next(build_source(pico_cfg, "FastEvalDataset").batches()), pico_cfg.feed_names)
    fetch = graph.pre_nms
    fp32_graph = graph.run(graph.variant(list(graph.layers)), feed, fetch)
    int8_graph = graph.run(graph.variant([]), feed, fetch)
    one = graph.run(graph.variant(["conv2d_1.w_0"]), feed, fetch)
    import paddle
    paddle.disable_static()
    # the FP32 program's own pre-NMS outputs, run by a plain executor
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        prog, feeds, _ = paddle.static.load_inference_model(str(fp32_files.model_dir), exe,
                                                            model_filename="model.pdmodel",
                                                            params_filename="model.pdiparams")
        ref = exe.run(prog, feed={k: feed[k] for k in feeds}, fetch_list=fetch, scope=scope)
    paddle.disable_static()
    for a, b in zip(fp32_graph, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert max(float(np.abs(a - b).max()) for a, b in zip(int8_graph, ref)) > 1e-4  # quantization changes outputs
    assert any(float(np.abs(a - b).max()) > 0 for a, b in zip(one, int8_graph))


def _analysis_config(tmp_path, extra=""):
    fast = write_subset(DEMO_DATA / "annotations/instances_val.json", tmp_path / "fast.json", 8)
    return write_config(tmp_path, f"""_BASE_: ['@DEMO@/picodet_s_analysis.yaml']
save_dir: {tmp_path / 'ana'}
get_target_quant_model: False
FastEvalDataset:
  !COCODataSet
    image_dir: val
    anno_path: {fast}
    dataset_dir: {DEMO_DATA}
{extra}""")


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "analysis.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=1800)


def test_analysis_ranks_searches_and_resumes(tmp_path):
    cfg_path = _analysis_config(tmp_path)
    r = _run("--config_path", str(cfg_path), "--rank_modes", "revert", "--proxy_batches", "1",
             "--max_drop", "0.02", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    ana = tmp_path / "ana"
    data = json.loads((ana / "ranking.json").read_text())
    n = len(data["ranking"])
    assert n > 50
    counters = data["counters"]
    assert counters["calibrations"] == 2  # the analysis calibration + the verified target model
    assert counters["full_evaluations"] <= math.ceil(math.log2(n + 1)) + 3
    target = data["target"]
    assert target["target"] == pytest.approx(data["fp32_map"] - 0.02)
    assert target["verified_map"] is not None
    for name in ("ranking.csv", "sensitivity.png", "activation_distribution.png", "activation_distribution.pdf",
                 "weight_distribution.png", "analysis.md", "distribution_stats.json"):
        assert (ana / name).is_file(), name
    analyzed = load_config(next(ana.glob("*_analyzed_ptq.yaml")))
    assert analyzed.skip_tensor_list == target["skip"]
    assert analyzed.ptq == load_config(cfg_path).ptq
    assert (ana / "target_quant_model" / "model.pdmodel").is_file()

    # the same config again: everything comes from the cache
    r = _run("--config_path", str(cfg_path), "--rank_modes", "revert", "--proxy_batches", "1",
             "--max_drop", "0.02", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((ana / "ranking.json").read_text())
    assert again["counters"]["fast_evaluations"] == 0
    assert again["counters"]["calibrations"] == 1  # only the target model is rebuilt
    assert [row["layer"] for row in again["ranking"]] == [row["layer"] for row in data["ranking"]]

    # a changed PTQ section is a new cache key: nothing stale is reused
    from ptqdet.analysis.sensitivity import cache_key
    changed = _analysis_config(tmp_path, "PTQ:\n  batch_nums: 4\n")
    assert cache_key(load_config(changed), {}) != cache_key(load_config(cfg_path), {})
