"""The target stage: search_prefix wired to the trial models, to PTQ and to the deployment runtime.

The search runs on the search images, the verification on the held-out images (heldout.py):
the target is a drop from FP32 (FP32 mAP on EvalDataset - target), applied to the FP32 mAP of
each image set. The float layers are chosen by accuracy per millisecond on the deployment
runtime (search.latency_order over the measured layer costs) when it has a per-layer profile,
else by accuracy alone; the accuracy-only choice is searched and timed beside it.
"""
from __future__ import annotations

import hashlib
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import open_backend
from ..benchmark import ModelSet, measure_models
from ..config import ConfigError, PTQDetConfig
from ..data import BatchSource
from ..files import ModelFiles
from ..metrics import evaluate
from ..model import BackendOptions
from ..quantize import SAVED_FILES, quantize_files
from .context import AnalysisContext
from .deploy import deploy_form, float_variant, qdq_config, runtime_form
from .results import AnalysisOptions, Choice, TargetResult
from .search import MAX_VERIFICATIONS, SearchOutcome, latency_order, search_prefix
from .sensitivity import Evaluator

TARGET_DIR = "target_quant_model"  # paddleslim's Analysis saves its target model under the same name
PARITY_POINTS = 0.3  # mAP points between the deployment runtime and the simulated model that get flagged


@dataclass
class TargetInputs:
    """What the target stage takes from the stages before it."""

    search: Evaluator  # trial models on the search images
    heldout: BatchSource  # the held-out images (the real model's verification)
    fp32: dict[str, float]  # FP32 mAP: "all" (EvalDataset), "search", "heldout"
    int8_search: float  # all-INT8 trial model on the search images
    ranking: list[str]  # accuracy order (search.order_layers)
    damage: dict[str, float]  # the ranking's mAP damage per layer
    backend: str  # deployment runtime
    models: ModelSet  # FP32 and all-INT8 models in the runtime's form
    feed: dict[str, np.ndarray]  # one image, for latency
    costs: dict[str, float] = field(default_factory=dict)  # layer -> ms of float on the runtime ({}: unmeasured)
    base: list[str] = field(default_factory=list)  # layers measured to make the model faster in float


def target_metric(cfg: PTQDetConfig, max_drop: float | None, fp32_map: float) -> float | None:
    """The mAP the target model must reach on EvalDataset (None: no target model asked for);
    max_drop (command line) wins over the config's target_metric. ConfigError when no
    quantized model can reach it."""
    if not cfg.get_target_quant_model and max_drop is None:
        return None
    target = fp32_map - float(max_drop) if max_drop is not None else float(cfg.target_metric)
    if target > fp32_map:
        raise ConfigError(f"target_metric {target:.4f} is above the FP32 model's mAP {fp32_map:.4f} on EvalDataset: "
                          "no quantized model can reach it; lower target_metric")
    return target


def set_key(layers: list[str]) -> str:
    """Cache key of a set of float layers (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(layers)).encode()).hexdigest()[:16]


def trial_map(inputs: TargetInputs, ctx: AnalysisContext, layers: list[str]) -> float:
    """Trial-model mAP on the search images with `layers` in float, cached per layer set (any
    ranking, mode or target reuses it)."""
    cached = ctx.section("trials_search")
    key = set_key(layers)
    if key not in cached:
        cached[key] = inputs.search.evaluate_with_float(layers)
        ctx.counters.full_evaluations += 1
        ctx.save()
    return cached[key]


def accuracy_only(inputs: TargetInputs, ctx: AnalysisContext, threshold: float) -> tuple[int, float | None, int]:
    """The shortest prefix of the accuracy ranking meeting `threshold` on the search images
    (simulated, not verified): (layers in float, its mAP, new evaluations it cost)."""
    before = ctx.counters.full_evaluations
    ranking = inputs.ranking
    outcome = search_prefix(len(ranking), threshold, lambda k: trial_map(inputs, ctx, ranking[:k]),
                            lambda k: trial_map(inputs, ctx, ranking[:k]), max_verifications=1,
                            at_zero=inputs.int8_search)
    return outcome.num_float, outcome.simulated, ctx.counters.full_evaluations - before


def accuracy_only_parallel(inputs: TargetInputs, sim: Any, threshold: float) -> tuple[int, float | None, int]:
    """accuracy_only as a k-ary search on the workers of sim (parallel.Simulator)."""
    from .parallel import search_in_parallel

    before = sim.new
    ranking = inputs.ranking
    outcome, _ = search_in_parallel(sim, len(ranking), lambda k: ranking[:k], threshold,
                                    lambda k: sim.many([ranking[:k]])[0], max_verifications=1,
                                    at_zero=inputs.int8_search)
    return outcome.num_float, outcome.simulated, sim.new - before


def real_model(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
               skip: list[str], out_dir: Path, ctx: AnalysisContext) -> ModelFiles:
    """PTQ with `skip` in float, as post_quant.py makes it (QDQ form for an ONNX runtime)."""
    settings = qdq_config(cfg).ptq if inputs.backend != "paddle" else cfg.ptq
    quantize_files(cfg, fp32_files, out_dir, settings, list(cfg.skip_tensor_list) + skip, opts.device, opts.progress)
    ctx.counters.calibrations += 1
    return ModelFiles(out_dir, *SAVED_FILES)


def simulated_map(cfg: PTQDetConfig, opts: AnalysisOptions, files: ModelFiles, source: BatchSource, desc: str
                  ) -> float:
    """mAP of a real INT8 model run as the search simulated it (fake-quant graph on FP32 kernels)."""
    predictor = open_backend("paddle", files, BackendOptions(device=opts.device, threads=opts.threads, mkldnn=False))
    return evaluate(predictor, cfg, source=source, progress=opts.progress, desc=desc).map


def search_target(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
                  target: float, ctx: AnalysisContext) -> TargetResult:
    """Search (search images), verify (held-out images), then measure on the deployment runtime."""
    drop = inputs.fp32["all"] - target
    search_thr, heldout_thr = inputs.fp32["search"] - drop, inputs.fp32["heldout"] - drop
    latency_aware = opts.latency_aware and bool(inputs.costs)
    base = list(inputs.base) if latency_aware else []
    order = latency_order(inputs.ranking, inputs.damage, inputs.costs, base) if latency_aware else list(inputs.ranking)
    out_dir = opts.save_dir / TARGET_DIR
    # the budget for the target's full evaluations: ceil(log2 N) + 3; a probe of the base
    # alone (likely to meet the target: its layers are float) takes one from the verifications
    budget = math.ceil(math.log2(max(len(inputs.ranking), 2))) + 3
    searched = math.ceil(math.log2(len(order) + 1)) + (1 if base else 0)  # simulations at most

    def verify(k: int) -> float:
        with ctx.timed("target_verify"):
            files = real_model(cfg, opts, inputs, fp32_files, base + order[:k], out_dir, ctx)
            ctx.counters.full_evaluations += 1
            return simulated_map(cfg, opts, files, inputs.heldout, "verify target model (held-out)")

    bar = ctx.bar(None, total=math.ceil(math.log2(len(order) + 1)), desc="target search", unit="eval")
    kwargs = dict(verify_target=heldout_thr, at_zero=None if base else inputs.int8_search, probe_zero=bool(base),
                  max_verifications=max(1, min(MAX_VERIFICATIONS, budget - searched)))
    if opts.parallel is None:
        outcome = search_prefix(len(order), search_thr, lambda k: trial_map(inputs, ctx, base + order[:k]), verify,
                                on_step=bar.update if bar is not None else None, **kwargs)
        with ctx.timed("target_search_map"):
            search_map = simulated_map(cfg, opts, ModelFiles(out_dir, *SAVED_FILES), inputs.search.source,
                                       "target model (search images)")
        result = target_result(opts, inputs, target, base, order, outcome, len(outcome.tried), bar, ctx, search_map)
        deploy_checks(cfg, opts, inputs, fp32_files, result, ctx)
        return result
    # --workers: the search's simulations on the Ray workers (each split over them, or k at once:
    # --search_width); while the driver
    # verifies the target model (PTQ, mostly one core), the workers search the accuracy-only choice
    from .kary_search import kary_rounds
    from .parallel import search_in_parallel, simulations

    if bar is not None:
        bar.reset(total=kary_rounds(len(order), opts.parallel.search_width))
    with simulations(cfg, opts, inputs.search, ctx.section("trials_search"), set_key, ctx) as sim, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="accuracy-only") as background:
        comparison: list[Future] = []

        def start_comparison() -> None:
            comparison.append(background.submit(accuracy_only_parallel, inputs, sim, search_thr))

        outcome, rounds = search_in_parallel(sim, len(order), lambda k: base + order[:k], search_thr, verify,
                                             on_round=(lambda _: bar.update()) if bar is not None else None,
                                             before_verify=start_comparison, **kwargs)
        # the real model on the search images: on the workers (after the comparison), while the
        # driver measures it on the deployment runtime
        search_map = background.submit(sim.model_map, ModelFiles(out_dir, *SAVED_FILES))
        result = target_result(opts, inputs, target, base, order, outcome, rounds, bar, ctx, None)
        deploy_checks(cfg, opts, inputs, fp32_files, result, ctx, comparison[0] if comparison else None, search_map)
    return result


def target_result(opts: AnalysisOptions, inputs: TargetInputs, target: float, base: list[str], order: list[str],
                  outcome: SearchOutcome, rounds: int, bar: Any, ctx: AnalysisContext, search_map: float | None
                  ) -> TargetResult:
    """The searched and verified target model, with its mAP on the search images (None: set later)."""
    if bar is not None:
        bar.close()
    ctx.counters.full_evaluations += 1  # the real model on the search images (reported beside the held-out mAP)
    drop = inputs.fp32["all"] - target
    skip = base + order[:outcome.num_float]
    out_dir = opts.save_dir / TARGET_DIR
    return TargetResult(
        target=target, skip=skip, num_skipped=len(skip), simulated_map=outcome.simulated,
        verified_map=outcome.verified, met=outcome.met, deployed_map=0.0, deployed_runtime="",
        verifications=outcome.verifications, search_evaluations=outcome.evaluations, model_dir=str(out_dir),
        tried=outcome.tried, search_rounds=rounds, search_target=inputs.fp32["search"] - drop,
        heldout_target=inputs.fp32["heldout"] - drop,
        search_map=search_map,
        selection="latency" if opts.latency_aware and bool(inputs.costs) else "accuracy", latency_base=base)


def deploy_checks(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
                  result: TargetResult, ctx: AnalysisContext, comparison: Future | None = None,
                  search_map: Future | None = None) -> None:
    """The target model on the deployment runtime: its held-out mAP (parity with the simulated
    one) and its latency beside FP32, the all-INT8 model and the accuracy-only choice
    (comparison: its search, running on the workers; None: searched here). search_map: the
    model's mAP on the search images, running on the workers (awaited before the timing)."""
    files = ModelFiles(Path(result.model_dir), *SAVED_FILES)
    work = ctx.work_dir / "deploy_target"
    with ctx.timed("target_runtime_map"):
        target_form = deploy_form(files, inputs.backend, work / "target_onnx")
        runner = open_backend(inputs.backend, target_form)
        result.deployed_runtime = runner.mode
        result.deployed_map = evaluate(runner, cfg, source=inputs.heldout, progress=opts.progress,
                                       desc=f"target model on {inputs.backend} (held-out)").map
    ctx.counters.full_evaluations += 1
    if result.verified_map is not None:
        result.parity_flag = abs(result.deployed_map - result.verified_map) * 100 > PARITY_POINTS
    models = {"FP32": runtime_form(inputs.models, "FP32", inputs.backend), "INT8 target": target_form,
              "INT8 all layers": runtime_form(inputs.models, "INT8", inputs.backend)}
    with ctx.timed("target_accuracy_only"):
        timed_as, compared = accuracy_choice(cfg, opts, inputs, fp32_files, result, ctx, comparison)
    if compared is not None:
        models[timed_as] = compared
    if search_map is not None:  # the latency is measured on an idle machine
        with ctx.timed("target_search_map"):
            result.search_map = search_map.result()
    with ctx.timed("target_latency"):
        rows = measure_models(cfg, models, inputs.backend, opts.deploy_threads, inputs.feed, opts.progress)
    result.latency = {name: round(row.median, 3) for name, row in rows.items() if row.median}
    fp32_ms = result.latency.get("FP32")
    result.ratio = result.latency["INT8 target"] / fp32_ms if fp32_ms else None
    if result.accuracy_only is not None:
        result.accuracy_only.latency_ms = result.latency.get(timed_as)
        result.accuracy_only.ratio = result.accuracy_only.latency_ms / fp32_ms if fp32_ms else None


def accuracy_choice(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
                    result: TargetResult, ctx: AnalysisContext, search: Future | None = None
                    ) -> tuple[str, Path | None]:
    """result.accuracy_only (the mAP-only choice on the search images), and (latency row that
    times it, the runtime form of its model when no other row has it). search: the choice's
    search already running (accuracy_only_parallel); None: search it here."""
    k, sim, spent = search.result() if search is not None else accuracy_only(inputs, ctx, result.search_target)
    result.accuracy_only, result.comparison_evaluations = Choice(k, sim), spent
    skip = inputs.ranking[:k]
    if set(skip) == set(result.skip):
        return "INT8 target", None
    if not skip:
        return "INT8 all layers", None
    return "INT8 accuracy-only", timing_model(cfg, opts, inputs, fp32_files, skip, ctx)


def timing_model(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
                 skip: list[str], ctx: AnalysisContext) -> Path:
    """A model to time with `skip` in float, in the runtime's form: on an ONNX runtime the
    all-INT8 export with those layers in float (float_variant: the graph PTQ would make, without
    a calibration: scales do not change the latency); on Paddle, or when the export is not in
    that form, the real model (PTQ)."""
    if inputs.backend != "paddle":
        try:
            return float_variant(runtime_form(inputs.models, "INT8", inputs.backend), skip,
                                 ctx.work_dir / "accuracy_only_onnx")
        except ValueError:
            pass
    files = real_model(cfg, opts, inputs, fp32_files, skip, ctx.work_dir / "accuracy_only", ctx)
    return deploy_form(files, inputs.backend, ctx.work_dir / "accuracy_only_onnx")
