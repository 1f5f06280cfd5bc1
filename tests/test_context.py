"""The analysis' cache as the benchmark tools read it: through ptqdet.analysis.context, not by path."""
import json

import pytest

from ptqdet.analysis.context import WORK_DIR, cached_results, run_cache_path, seed_runtime_measurements


def _run(save_dir, data):
    path = save_dir / WORK_DIR / "0123456789abcdef" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_cached_results_and_a_replay_seeded_with_another_runs_measurements(tmp_path):
    serial = {"metric_quantize": {"conv2d_1.w_0": 0.1}, "latency_openvino": {"FP32": 5.0}}
    parallel = {"metric_quantize": {"conv2d_1.w_0": 0.1}, "latency_openvino": {"FP32": 7.0}}
    _run(tmp_path / "serial", serial)
    path = _run(tmp_path / "parallel", parallel)
    assert cached_results(tmp_path / "serial") == serial
    seed_runtime_measurements(tmp_path / "parallel", cached_results(tmp_path / "serial"))
    assert json.loads(path.read_text()) == {**parallel, "latency_openvino": {"FP32": 5.0}}


def test_no_measurements_to_seed_and_no_single_cache_are_errors(tmp_path):
    _run(tmp_path / "a", {"metric_quantize": {}})
    with pytest.raises(ValueError, match="no runtime measurements"):
        seed_runtime_measurements(tmp_path / "a", {"metric_quantize": {}})
    with pytest.raises(FileNotFoundError, match="found 0"):
        run_cache_path(tmp_path / "none")
