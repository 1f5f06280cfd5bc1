"""analysis.py --workers N: the per-layer trials and the target search's simulations as Ray tasks.

The driver (analysis.py) puts what a trial needs into Ray's object store once: the calibrated
program and its recovered FP32 weights (file bytes), the decoded evaluation batches and the
annotation file of each dataset, the proxy's calibration feeds and the config. Each worker is
a Ray actor that builds the QuantGraph from them once and then runs trials with its own thread
budget (OMP/MKL threads, default 1: Paddle's CPU kernels scale poorly over threads, so two
one-thread workers beat one two-thread process). Trials run the serial code (metric_ranking,
proxy_ranking, Evaluator) on a worker; results return to the driver, which caches each one
as the serial run does (results.json after every result): an interrupted run resumes, and a
worker that dies is restarted by Ray, which runs its unfinished trial again.

Ray is imported here only, only with --workers. --ray_address joins an existing cluster
(`ray start --head` on one machine, `ray start --address HEAD:6379` on the others); there the
ptqdet package is shipped with the job, and every machine needs the same Python packages.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import open_backend
from ..config import PTQDetConfig
from ..data import BatchSource
from ..files import ModelFiles
from ..metrics import detect
from ..model import BackendOptions
from ..ray_pool import ParallelOptions, connect, model_bytes, thread_env, write_model
from .context import AnalysisContext, ResultCache
from .graph import QuantGraph
from .kary_search import search_prefix_kary
from .search import SearchOutcome
from .sensitivity import Evaluator, metric_ranking, proxy_ranking, section_name

PROXY_CHUNKS_PER_WORKER = 3  # proxy trials go in chunks: each chunk pays two reference runs
DATASET_FILE_ATTRS = ("anno_path", "label_list")  # files a metric reads, shipped with the batches
MAX_RESTARTS = 3  # a worker killed more often than this fails the run (finished trials stay cached)


@dataclass(frozen=True)
class Trial:
    """One unit of work for a worker: "metric" (one layer's mAP damage), "proxy" (SQNR loss of
    a chunk of layers), "detect" (detections of batches[part[0]:part[1]] with `layers` in
    float: a part of one of the target search's simulations) or "model_detect" (the same of a
    real model, `model`: the object ref of its files)."""

    kind: str
    mode: str = ""
    layers: tuple[str, ...] = ()
    reference: float = 0.0
    dataset: str = "fast"
    key: str = ""  # detect: the float-layer set, as the search cache names it
    part: tuple[int, int] = (0, 0)  # detect, model_detect: the batches [start, stop)
    model: Any = None  # model_detect: object ref of {file name: bytes}


def ship_dataset(evaluator: Evaluator) -> dict[str, Any]:
    """An Evaluator's dataset as a worker needs it: decoded batches, the ppdet dataset object and
    the files its metric reads (no image is read again)."""
    dataset = evaluator.source.dataset
    root = Path(str(getattr(dataset, "dataset_dir", "") or ""))
    files = {attr: (root / getattr(dataset, attr)).read_bytes() for attr in DATASET_FILE_ATTRS
             if isinstance(getattr(dataset, attr, None), str) and (root / getattr(dataset, attr)).is_file()}
    return {"key": evaluator.source.key, "dataset": dataset, "files": files, "batches": evaluator.batches,
            "batch_size": evaluator.source.batch_size}


@dataclass
class DecodedSource(BatchSource):
    """A BatchSource whose batches were decoded elsewhere (shipped through the object store)."""

    decoded: list[dict[str, Any]] = field(default_factory=list)

    def batches(self, max_images: int | None = None) -> Iterator[dict[str, Any]]:
        return iter(self.decoded)


class TrialWorker:
    """A Ray actor (ray.remote is applied by trial_pool): the QuantGraph of the shipped files, an
    Evaluator per shipped dataset (built on first use), and the trials run on them."""

    def __init__(self):
        self.shipped: dict[str, Any] = {}  # the object refs of the payload, from the first trial

    def load(self, shipped: dict[str, Any]) -> None:
        """Build the graph from the payload once (on a restarted worker: again, at its next trial).
        The refs come with every trial, not to the constructor: Ray restarts an actor whose
        constructor arguments are in the object store only with a warning."""
        import ray

        from ..stdout import quiet_libraries

        quiet_libraries(True)
        self.ray, self.shipped = ray, shipped
        self.cfg: PTQDetConfig = ray.get(shipped["cfg"])
        with tempfile.TemporaryDirectory(prefix="ptqdet_worker_model_") as tmp:  # loaded into the graph's scope
            quant, fp32 = (write_model(Path(tmp) / name, ray.get(shipped[name])) for name in ("calibrated", "fp32"))
            self.graph = QuantGraph(quant, fp32)
        self.evaluators: dict[str, Evaluator] = {}
        self.metric_files: dict[str, dict[str, bytes]] = {}  # per dataset: the files its metric reads

    def pid(self) -> int:
        return os.getpid()

    def evaluator(self, name: str, folder: Path) -> Evaluator:
        """The Evaluator of a shipped dataset, its metric's files written to `folder` (the trial's
        temporary folder: a worker killed by Ray leaves nothing behind but that)."""
        if name not in self.evaluators:
            data = self.ray.get(self.shipped[name])
            dataset = data["dataset"]
            for attr in data["files"]:
                setattr(dataset, attr, Path(getattr(dataset, attr)).name)
            self.metric_files[name] = {getattr(dataset, attr): content for attr, content in data["files"].items()}
            source = DecodedSource(key=data["key"], dataset=dataset, batch_transforms=None,
                                   batch_size=data["batch_size"], decoded=data["batches"])
            self.evaluators[name] = Evaluator(self.cfg, self.graph, source)
        evaluator = self.evaluators[name]
        for file_name, content in self.metric_files[name].items():
            (folder / file_name).write_bytes(content)
        evaluator.source.dataset.dataset_dir = str(folder)
        return evaluator

    def run(self, shipped: dict[str, Any], trial: Trial) -> tuple[Trial, Any]:
        """The trial's result: {layer: damage} (metric, proxy) or a list of detections per batch (detect)."""
        if not self.shipped:
            self.load(shipped)
        with tempfile.TemporaryDirectory(prefix="ptqdet_trial_") as tmp:
            return trial, self.scores(trial, Path(tmp))

    def scores(self, trial: Trial, folder: Path) -> Any:
        ctx = AnalysisContext(folder, ResultCache(folder / "scratch.json"), progress=False)  # the serial code's cache
        if trial.kind == "metric":
            return metric_ranking(self.evaluator(trial.dataset, folder), list(trial.layers), trial.mode,
                                  trial.reference, ctx)
        if trial.kind == "proxy":
            return proxy_ranking(self.graph, self.ray.get(self.shipped["feeds"]), list(trial.layers), trial.mode, ctx)
        if trial.kind == "detect":
            return self.evaluator(trial.dataset, folder).detections_with_float(list(trial.layers), *trial.part)
        if trial.kind == "model_detect":
            files = write_model(folder / "model", self.ray.get(trial.model))
            runner = open_backend("paddle", files, BackendOptions(threads=int(os.environ.get("OMP_NUM_THREADS", "1")),
                                                                  mkldnn=False))
            batches = self.evaluator(trial.dataset, folder).batches[slice(*trial.part)]
            return [detect(runner, self.cfg, batch) for batch in batches]
        raise ValueError(f"unknown trial kind {trial.kind!r}")


class TrialPool:
    """The workers of one stage; run() hands each idle worker the next trial."""

    def __init__(self, ray: Any, actors: list[Any], shipped: dict[str, Any], shipped_bytes: int, progress: bool):
        self.ray, self.actors, self.shipped, self.progress = ray, actors, shipped, progress
        self.shipped_bytes = shipped_bytes

    def run(self, trials: list[Trial], on_result: Callable[[Trial, Any], None], desc: str | None) -> None:
        """Run every trial; on_result(trial, result) in the driver as each one finishes (desc: a
        progress bar's title; None: no bar)."""
        from ray.util import ActorPool

        bar = None
        if self.progress and desc:
            from tqdm import tqdm
            bar = tqdm(total=len(trials), desc=f"{desc} ({len(self.actors)} workers)", unit="trial")
        submit = lambda actor, trial: actor.run.remote(self.shipped, trial)  # noqa: E731
        for trial, scores in ActorPool(self.actors).map_unordered(submit, trials):
            on_result(trial, scores)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def trial_pool(cfg: PTQDetConfig, opts: ParallelOptions, graph: QuantGraph, datasets: dict[str, Evaluator],
               feeds: list[dict[str, Any]] | None, progress: bool) -> Iterator[TrialPool]:
    """opts.workers TrialWorkers on graph's files, `datasets` ({name: Evaluator}) and `feeds`, put
    in the object store once; the workers are killed when the block ends."""
    ray = connect(opts, quiet=not progress)
    payload: dict[str, Any] = {"cfg": cfg, "calibrated": model_bytes(graph.quant_files),
                               "fp32": model_bytes(graph.fp32_files),
                               **{name: ship_dataset(ev) for name, ev in datasets.items()}}
    if feeds is not None:
        payload["feeds"] = feeds
    shipped = {name: ray.put(value) for name, value in payload.items()}
    size = sum(payload_bytes(v) for v in payload.values())
    if progress:
        print(f"object store: {size / 1e6:.1f} MB put once ({', '.join(payload)}) for {opts.workers} workers",
              file=sys.stderr)
    worker = ray.remote(TrialWorker).options(num_cpus=opts.threads, max_restarts=MAX_RESTARTS,
                                             max_task_retries=MAX_RESTARTS,
                                             runtime_env={"env_vars": thread_env(opts.threads)})
    actors = [worker.remote() for _ in range(opts.workers)]
    try:
        yield TrialPool(ray, actors, shipped, size, progress)
    finally:
        for actor in actors:
            ray.kill(actor)


def payload_bytes(value: Any) -> int:
    """Bytes of the arrays and byte strings in a (nested) payload: what the object store moves."""
    if isinstance(value, bytes):
        return len(value)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    return 0


def rank_in_parallel(cfg: PTQDetConfig, opts: Any, graph: QuantGraph, fast: Evaluator, references: dict[str, float],
                     feeds: list[dict[str, Any]], ctx: AnalysisContext, beside: Callable[[], None] | None = None
                     ) -> None:
    """Fill the cache sections of the rankings (proxy_<mode>, metric_<mode>; opts: the
    AnalysisOptions) on opts.parallel's workers; the serial loops then read every score
    from the cache. Cached layers are not run again. beside: the driver's own work, run while
    the workers rank (the driver only waits on them then); it must not need the rankings, and
    it is over when this returns."""
    layers = list(graph.layers)
    trials: list[Trial] = []
    chunk = max(1, math.ceil(len(layers) / (opts.parallel.workers * PROXY_CHUNKS_PER_WORKER)))
    for mode in opts.rank_modes if opts.proxy_batches > 0 else ():  # the longer trials first
        pending = [n for n in layers if n not in ctx.section(section_name("proxy", mode, len(feeds)))]
        trials += [Trial("proxy", mode, tuple(pending[i:i + chunk])) for i in range(0, len(pending), chunk)]
    for mode in opts.rank_modes:
        trials += [Trial("metric", mode, (n,), references[mode]) for n in layers
                   if n not in ctx.section(section_name("metric", mode))]
    if not trials:
        if beside is not None:
            beside()
        return

    def on_result(trial: Trial, scores: dict[str, float]) -> None:
        batches = len(feeds) if trial.kind == "proxy" else None
        ctx.section(section_name(trial.kind, trial.mode, batches)).update(scores)
        if trial.kind == "metric":
            ctx.counters.fast_evaluations += 1
        ctx.save()

    # the trials are waited on in a thread, the driver's own work runs in the main thread (Paddle's
    # static-graph mode is per thread and cannot be entered from another); on an error in
    # either, the pool closes first (its workers killed), then the waiting thread ends
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-trials") as waiter, \
            trial_pool(cfg, opts.parallel, graph, {"fast": fast}, feeds if opts.proxy_batches > 0 else None,
                       ctx.progress) as pool:
        job = waiter.submit(pool.run, trials, on_result, "layer trials")
        if beside is not None:
            beside()
        job.result()


class Simulator:
    """The target stage's simulations (mAP on the search images with a set of layers in float) on
    the workers, each cached in `cached` under cache_key(layers) as the serial search caches it.
    Each simulation is split into parts (contiguous batches) so that every worker has one: one
    set on two workers takes half a simulation's time, two sets one each. The workers return
    detections; the driver scores each set's parts together, in batch order, as evaluate() would
    (the same mAP as the serial run). The pool starts on the first simulation not in the cache
    and lives as long as the simulations() block. Safe to use from two driver threads (one pool
    run at a time)."""

    def __init__(self, cfg: PTQDetConfig, opts: Any, search: Evaluator, cached: dict[str, float],
                 cache_key: Callable[[list[str]], str], ctx: AnalysisContext, stack: contextlib.ExitStack):
        self.cfg, self.opts, self.search, self.cached, self.cache_key = cfg, opts, search, cached, cache_key
        self.ctx, self.stack = ctx, stack
        self.pool: TrialPool | None = None
        self.lock = threading.Lock()
        self.new = 0  # simulations run (not found in the cache)

    @property
    def workers(self) -> int:
        return self.opts.parallel.workers

    def many(self, sets: list[list[str]]) -> list[float]:
        """mAP on the search images with each set of layers in float, the missing ones run at once."""
        with self.lock:
            todo = {self.cache_key(s): s for s in sets if self.cache_key(s) not in self.cached}
            if todo:
                parts = split_batches(len(self.search.batches), max(1, self.workers // len(todo)))
                trials = [Trial("detect", layers=tuple(s), dataset="search", key=k, part=part)
                          for k, s in todo.items() for part in parts]
                done: dict[str, dict[tuple[int, int], list[Any]]] = {k: {} for k in todo}

                def on_result(trial: Trial, detections: list[Any]) -> None:
                    done[trial.key][trial.part] = detections
                    if len(done[trial.key]) == len(parts):
                        self._scored(trial.key, [d for part in parts for d in done[trial.key][part]])

                self._pool().run(trials, on_result, None)
            return [self.cached[self.cache_key(s)] for s in sets]

    def model_map(self, files: ModelFiles) -> float:
        """mAP on the search images of a real model run as the search simulated it (fake-quant
        graph on FP32 kernels: target.simulated_map), split over the workers like a simulation."""
        with self.lock:
            pool = self._pool()
            model = pool.ray.put(model_bytes(files))
            parts = split_batches(len(self.search.batches), self.workers)
            done: dict[tuple[int, int], list[Any]] = {}
            pool.run([Trial("model_detect", dataset="search", part=part, model=model) for part in parts],
                          lambda trial, detections: done.__setitem__(trial.part, detections), None)
            return self.search.map_of_detections([d for part in parts for d in done[part]])

    def _pool(self) -> TrialPool:
        """The workers, started on first use (the lock is held)."""
        if self.pool is None:
            self.pool = self.stack.enter_context(trial_pool(self.cfg, self.opts.parallel, self.search.graph,
                                                            {"search": self.search}, None, self.ctx.progress))
        return self.pool

    def _scored(self, key: str, detections: list[Any]) -> None:
        self.cached[key] = self.search.map_of_detections(detections)
        self.ctx.counters.full_evaluations += 1
        self.new += 1
        self.ctx.save()


def split_batches(num_batches: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of up to `parts` contiguous, nearly equal runs of batches (none empty)."""
    parts = max(1, min(parts, num_batches))
    bounds = [round(i * num_batches / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


@contextlib.contextmanager
def simulations(cfg: PTQDetConfig, opts: Any, search: Evaluator, cached: dict[str, float],
                cache_key: Callable[[list[str]], str], ctx: AnalysisContext) -> Iterator[Simulator]:
    """A Simulator on opts.parallel's workers (opts: the AnalysisOptions); its workers are killed
    when the block ends."""
    with contextlib.ExitStack() as stack:
        yield Simulator(cfg, opts, search, cached, cache_key, ctx, stack)


def search_in_parallel(sim: Simulator, num_layers: int, prefix: Callable[[int], list[str]], target: float,
                       verify: Callable[[int], float], on_round: Callable[[Any], None] | None = None,
                       **search_kwargs: Any) -> tuple[SearchOutcome, int]:
    """The k-ary search (k = opts.parallel.search_width prefix lengths per round; 1: the binary
    search, each simulation split over the workers) over prefix lengths 0..num_layers, prefix(k)
    in float, its simulations on sim's workers. search_kwargs: those of search_prefix_kary
    (verify_target, at_zero, probe_zero, max_verifications, before_verify). Returns the outcome
    and the rounds."""
    def simulate_many(ks: list[int]) -> dict[int, float]:
        return dict(zip(ks, sim.many([prefix(k) for k in ks])))

    return search_prefix_kary(num_layers, target, simulate_many, verify, sim.opts.parallel.search_width,
                              on_round=on_round, **search_kwargs)
