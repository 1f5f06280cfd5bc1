"""What every stage of an analysis shares: its result cache, its counters and its progress bars."""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PTQDetConfig
from ..data import dataset_digest
from ..files import ModelFiles, read_cache_json
from ..paddle_static import model_digest
from ..report import write_json

WORK_DIR = ".work"  # under save_dir: one folder per cache key
CACHE_VERSION = 3  # part of the cache key: bump when a cached value changes meaning


@dataclass
class Counters:
    """What the analysis spent: shown in its report."""

    calibrations: int = 0
    full_evaluations: int = 0  # on EvalDataset
    fast_evaluations: int = 0  # on FastEvalDataset (or EvalDataset when there is none)
    proxy_runs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As ranking.json holds them: seconds rounded to 0.1."""
        return {"calibrations": self.calibrations, "full_evaluations": self.full_evaluations,
                "fast_evaluations": self.fast_evaluations, "proxy_runs": self.proxy_runs,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()}}


def cache_key(cfg: PTQDetConfig, extra: dict[str, Any]) -> str:
    """Hash of everything a result depends on: model files, PTQ settings, the layers kept in
    float (skip_tensor_list and skip_op_types), and the datasets (annotations and images)."""
    files = ModelFiles(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    h = model_digest(files, cfg.ptq.to_dict(), sorted(cfg.skip_tensor_list), sorted(cfg.skip_op_types))
    h.update(dataset_digest(cfg, ("TrainDataset", "EvalDataset", "FastEvalDataset")).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class ResultCache:
    """Per-layer results saved after each layer, keyed by cache_key: a changed config never
    reuses them, an interrupted run picks up where it stopped."""

    def __init__(self, path: Path):
        self.path = path
        # damaged (cut short by a full disk or a killed copy): one warning, and what it held is
        # computed again; a section that is not a mapping is dropped the same way
        data = read_cache_json(path, "the analysis cache") or {}
        damaged = sorted(str(k) for k, v in data.items() if not isinstance(v, dict))
        if damaged:
            print(f"warning: the analysis cache {path} holds damaged sections {damaged}: computing them again",
                  file=sys.stderr)
        self.data: dict[str, Any] = {k: v for k, v in data.items() if isinstance(v, dict)}
        self.lock = threading.Lock()  # --workers: the accuracy-only search saves from a thread of its own

    def get(self, section: str) -> dict[str, Any]:
        with self.lock:
            return self.data.setdefault(section, {})

    def save(self) -> None:
        with self.lock:
            write_json(self.path, self.data)


@dataclass
class AnalysisContext:
    """The cache (in work_dir, one folder per cache key), the counters and the progress switch
    of one analysis run."""

    work_dir: Path
    cache: ResultCache
    counters: Counters = field(default_factory=Counters)
    progress: bool = True

    @classmethod
    def open(cls, save_dir: Path, key: str, progress: bool = True) -> AnalysisContext:
        work_dir = save_dir / WORK_DIR / key
        return cls(work_dir, ResultCache(work_dir / "results.json"), progress=progress)

    def section(self, name: str) -> dict[str, Any]:
        """The cached results of one stage (a dict to fill; save() writes it)."""
        return self.cache.get(name)

    def save(self) -> None:
        self.cache.save()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to counters.seconds[stage] (a stage timed in several blocks sums them)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.counters.seconds[stage] = self.counters.seconds.get(stage, 0.0) + time.perf_counter() - start

    def bar(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """A tqdm bar over `iterable` (or a manual one), or the iterable itself (None) when
        progress is off."""
        if not self.progress:
            return iterable
        from tqdm import tqdm
        return tqdm(iterable, **kwargs)


def run_cache_path(save_dir: Path) -> Path:
    """The result cache of the analysis run in save_dir (its work folder: one cache key)."""
    caches = sorted(Path(save_dir).glob(f"{WORK_DIR}/*/results.json"))
    if len(caches) != 1:
        raise FileNotFoundError(f"expected one analysis result cache under {save_dir / WORK_DIR}, found {len(caches)}")
    return caches[0]


def cached_results(save_dir: Path) -> dict[str, Any]:
    """What the analysis run in save_dir cached: per-layer scores (metric_*, proxy_*), runtime
    measurements (latency_*) and the other sections, by section name."""
    return ResultCache(run_cache_path(save_dir)).data


def seed_runtime_measurements(save_dir: Path, source: dict[str, Any]) -> None:
    """Put another run's runtime measurements (its latency_* sections) into the cache of the
    analysis in save_dir, so that running it again decides on the same timings (a replay)."""
    latency = {k: v for k, v in source.items() if k.startswith("latency_")}
    if not latency:
        raise ValueError("the source run has no runtime measurements (accuracy selection?)")
    cache = ResultCache(run_cache_path(save_dir))
    cache.data.update(latency)
    cache.save()
