"""analysis.py --workers on a real local Ray cluster (ray.init with 2 CPUs, started here): the
same ranking, proxy and target as the serial run; a worker killed mid-run loses no finished
trial; an interrupted parallel run resumes from its cache. Lean: 24 of the demo PicoDet-s'
98 layers are quantized (the others in skip_tensor_list), 8 FastEval and 16 Eval images,
2 calibration batches."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DEMO_DATA, MODELS, ROOT, write_config
from ptqdet.annotations import write_subset

pytestmark = pytest.mark.slow

WORKER_TITLE = b"ray::TrialWorker"


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    saved = {k: os.environ.get(k) for k in ("RAY_worker_niceness", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_worker_niceness="0", RAY_USAGE_STATS_ENABLED="0")
    ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _config(tmp_path: Path) -> Path:
    from ptqdet.model import resolve_model_files
    from ptqdet.quantize import layer_weights

    layers = layer_weights(resolve_model_files(MODELS / "picodet_s_shapes"), ["conv2d", "depthwise_conv2d"])
    keep = set(layers[:6] + layers[6::5])  # the first (most sensitive) six, then every fifth
    skip = "".join(f"  - {name}\n" for name in layers if name not in keep)
    fast = write_subset(DEMO_DATA / "annotations/instances_val.json", tmp_path / "fast.json", 8)
    full = write_subset(DEMO_DATA / "annotations/instances_val.json", tmp_path / "full.json", 16)
    datasets = "".join(f"""{key}:
  !COCODataSet
    image_dir: val
    anno_path: {anno}
    dataset_dir: {DEMO_DATA}
""" for key, anno in (("FastEvalDataset", fast), ("EvalDataset", full)))
    return write_config(tmp_path, f"""_BASE_: ['@DEMO@/picodet_s_analysis.yaml']
save_dir: {tmp_path / 'ana'}
get_target_quant_model: False
plot_hist: False
PTQ:
  batch_nums: 2
{datasets}skip_tensor_list:
{skip}""")


def _serial(cfg_path: Path, save_dir: Path) -> dict:
    """The analysis without workers, in a fresh process: its scores at full precision (ranking.json
    rounds them), its target, and whether Ray got imported."""
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from ptqdet import cli
cli.quiet_libraries(True)
from ptqdet.analysis.stages import AnalysisOptions, analyze
from ptqdet.config import load_config
r = analyze(load_config({str(cfg_path)!r}), AnalysisOptions(save_dir=__import__('pathlib').Path({str(save_dir)!r}),
            proxy_batches=1, max_drop=0.02, progress=False))
print(json.dumps({{"ranking": r.ranking, "metric": r.metric_scores, "proxy": r.proxy_scores,
                  "target": r.target.to_dict(), "ray_imported": "ray" in sys.modules}}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _parallel(cfg_path: Path, save_dir: Path, workers: int = 2, max_drop: float | None = 0.02,
              rank_modes: tuple[str, ...] = ("quantize", "revert"), proxy_batches: int = 1):
    from ptqdet.analysis.parallel import ParallelOptions
    from ptqdet.analysis.stages import AnalysisOptions, analyze
    from ptqdet.config import load_config

    opts = AnalysisOptions(save_dir=save_dir, rank_modes=rank_modes, proxy_batches=proxy_batches, max_drop=max_drop,
                           progress=False, parallel=ParallelOptions(workers=workers))
    return analyze(load_config(cfg_path), opts)


def _same_scores(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name


def test_two_workers_give_the_serial_ranking_proxy_and_target(tmp_path, ray_cluster):
    cfg_path = _config(tmp_path)
    serial = _serial(cfg_path, tmp_path / "serial")
    result = _parallel(cfg_path, tmp_path / "parallel")
    assert not serial["ray_imported"]  # no workers: nothing of Ray is loaded
    assert 20 <= len(result.ranking) <= 30
    assert result.ranking == serial["ranking"]  # same order
    for mode in ("quantize", "revert"):
        _same_scores(result.metric_scores[mode], serial["metric"][mode])
        _same_scores(result.proxy_scores[mode], serial["proxy"][mode])
    assert result.counters.fast_evaluations == 2 + 2 * len(result.ranking)  # references + every trial once
    t = result.target
    assert t.skip == serial["target"]["skip"] and t.met == serial["target"]["met"]
    # a k-ary search with 2 workers: fewer rounds than the binary search's simulations
    assert t.search_rounds <= serial["target"]["search_rounds"]
    assert len(t.tried) <= 2 * t.search_rounds


def _worker_pids() -> list[int]:
    """The TrialWorker processes of this test's Ray cluster (descendants of this process)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with_name = stat.read_text().rsplit(")", 1)[-1].split()
        parent[int(stat.parent.name)] = int(with_name[1])
    mine = []
    for pid in parent:
        p = pid
        while p in parent and p not in (0, 1, os.getpid()):
            p = parent[p]
        cmdline = Path(f"/proc/{pid}/cmdline")
        if p == os.getpid() and cmdline.exists() and cmdline.read_bytes().startswith(WORKER_TITLE):
            mine.append(pid)
    return mine


def test_killed_worker_loses_no_finished_trial_and_an_interrupted_run_resumes(tmp_path, ray_cluster):
    cfg_path = _config(tmp_path)
    save_dir = tmp_path / "killed"
    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(result=_parallel(
        cfg_path, save_dir, max_drop=None, rank_modes=("quantize",), proxy_batches=0)))
    run.start()
    before: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while run.is_alive() and time.monotonic() < deadline and len(before) < 4:
        caches = list(save_dir.glob(".work/*/results.json"))
        if caches:  # written atomically after each result
            before = json.loads(caches[0].read_text()).get("metric_quantize", {})
        time.sleep(0.1)
    victims = _worker_pids()
    assert run.is_alive() and len(before) >= 4 and victims, "the run ended or never reached its trials"
    os.kill(victims[0], signal.SIGKILL)
    run.join(timeout=900)
    result = outcome["result"]
    n = len(result.ranking)
    assert victims[0] not in _worker_pids()  # it died; Ray restarted the worker and re-ran its trial
    assert result.counters.fast_evaluations == 2 + n  # each trial's result arrived once
    for name, value in before.items():  # the trials finished before the kill are kept as they were
        assert result.metric_scores["quantize"][name] == value

    # an interrupted parallel run: results.json holds part of the trials; the next run does the rest only
    cache = next(save_dir.glob(".work/*/results.json"))
    data = json.loads(cache.read_text())
    full = dict(data["metric_quantize"])
    dropped = list(full)[::3]
    for name in dropped:
        del data["metric_quantize"][name]
    cache.write_text(json.dumps(data))
    again = _parallel(cfg_path, save_dir, max_drop=None, rank_modes=("quantize",), proxy_batches=0)
    assert again.counters.fast_evaluations == len(dropped)
    _same_scores(again.metric_scores["quantize"], full)
    assert again.ranking == result.ranking
