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
import shutil
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
from ..paddle_static import atomic_dir
from ..quantize import SAVED_FILES, quantize_files
from .context import AnalysisContext
from .deploy import deploy_form, float_variant, qdq_config, runtime_form
from .results import AnalysisOptions, Choice, TargetResult
from .search import MAX_VERIFICATIONS, SearchOutcome, fastest_verified, latency_order, search_prefix
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
        result = target_result(opts, inputs, target, base, order, outcome, len(outcome.tried), bar, ctx, None)
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
    """The target model on the deployment runtime: its latency beside FP32, the all-INT8 model
    and the accuracy-only choice (comparison: its search, running on the workers; None: searched
    here), the fastest verified of them returned (return_fastest), then the returned model's
    held-out mAP there (parity with the simulated one) and on the search images (search_map: on
    the workers, awaited before the timing; None: measured here)."""
    files = ModelFiles(Path(result.model_dir), *SAVED_FILES)
    work = ctx.work_dir / "deploy_target"
    with ctx.timed("target_runtime_map"):
        target_form = deploy_form(files, inputs.backend, work / "target_onnx")
    models = {"FP32": runtime_form(inputs.models, "FP32", inputs.backend), "INT8 target": target_form,
              "INT8 all layers": runtime_form(inputs.models, "INT8", inputs.backend)}
    with ctx.timed("target_accuracy_only"):
        timed_as, compared = accuracy_choice(cfg, opts, inputs, fp32_files, result, ctx, comparison)
    if compared is not None:
        models[timed_as] = compared
    if search_map is not None:  # the latency is measured on an idle machine
        with ctx.timed("target_search_map"):
            result.search_map = search_map.result()
    result.latency = timed_latency(cfg, opts, inputs, models, result, timed_as, ctx)
    fp32_ms = result.latency.get("FP32")
    result.ratio = result.latency["INT8 target"] / fp32_ms if fp32_ms else None
    if result.accuracy_only is not None:
        result.accuracy_only.latency_ms = result.latency.get(timed_as)
        result.accuracy_only.ratio = result.accuracy_only.latency_ms / fp32_ms if fp32_ms else None
    chosen_form = None
    if result.selection == "latency":  # accuracy selection returns the searched model as it is
        with ctx.timed("target_candidates"):
            chosen_form = return_fastest(cfg, opts, inputs, fp32_files, result, timed_as, ctx)
    returned_model_maps(cfg, opts, inputs, result, chosen_form or target_form, ctx)


def timed_latency(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, models: dict[str, Path],
                  result: TargetResult, timed_as: str, ctx: AnalysisContext) -> dict[str, float]:
    """Median ms of the models in the same alternated rounds on the deployment runtime, cached by
    their float layers (a re-run decides on the timings the first run took)."""
    skips = {"INT8 target": result.skip, "INT8 all layers": [],
             timed_as: inputs.ranking[:result.accuracy_only.num_float] if result.accuracy_only else []}
    key = set_key([f"{inputs.backend}:{opts.deploy_threads}t"] + [f"{name}={set_key(skips.get(name, []))}"
                                                                 for name in sorted(models)])
    cached = ctx.section("target_latency")
    if key not in cached:
        with ctx.timed("target_latency"):
            rows = measure_models(cfg, models, inputs.backend, opts.deploy_threads, inputs.feed, opts.progress)
        cached[key] = {name: round(row.median, 3) for name, row in rows.items() if row.median}
        ctx.save()
    return dict(cached[key])


def returned_model_maps(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, result: TargetResult,
                        form: Path, ctx: AnalysisContext) -> None:
    """The returned model's held-out mAP on the deployment runtime (and its parity with the
    simulated one), and its simulated mAP on the search images unless measured already."""
    with ctx.timed("target_runtime_map"):
        runner = open_backend(inputs.backend, form)
        result.deployed_runtime = runner.mode
        result.deployed_map = evaluate(runner, cfg, source=inputs.heldout, progress=opts.progress,
                                       desc=f"target model on {inputs.backend} (held-out)").map
    ctx.counters.full_evaluations += 1
    if result.verified_map is not None:
        result.parity_flag = abs(result.deployed_map - result.verified_map) * 100 > PARITY_POINTS
    if result.search_map is None:
        with ctx.timed("target_search_map"):
            result.search_map = simulated_map(cfg, opts, ModelFiles(Path(result.model_dir), *SAVED_FILES),
                                              inputs.search.source, "target model (search images)")


def candidate_skips(inputs: TargetInputs, result: TargetResult, timed_as: str) -> dict[str, list[str]]:
    """The float layers of every candidate timed beside the searched target model; a candidate
    with the searched model's float layers is that model (timed twice), not another candidate."""
    skips = {"INT8 target": list(result.skip), "INT8 all layers": []}
    if timed_as == "INT8 accuracy-only" and result.accuracy_only is not None:
        skips[timed_as] = inputs.ranking[:result.accuracy_only.num_float]
    return {name: skip for name, skip in skips.items() if name in result.latency
            and (name == "INT8 target" or set(skip) != set(result.skip))}


def return_fastest(cfg: PTQDetConfig, opts: AnalysisOptions, inputs: TargetInputs, fp32_files: ModelFiles,
                   result: TargetResult, timed_as: str, ctx: AnalysisContext) -> Path | None:
    """Make the target model the fastest candidate verified to meet the target on the held-out
    images (search.fastest_verified): a candidate timed faster than the searched model in the
    same rounds is built (PTQ) and verified (cached by its float layers); the one taken replaces
    the target model. Returns the runtime form of the model taken (None: the searched one)."""
    skips = candidate_skips(inputs, result, timed_as)
    cached = ctx.section("candidates")
    result.candidates = {"INT8 target": {"num_float": len(result.skip), "verified_map": result.verified_map,
                                         "met": result.met}}

    def model(name: str) -> ModelFiles:
        if name == "INT8 all layers":
            return inputs.models.int8  # the all-INT8 model (PTQ of the config's section, QDQ form)
        out = ctx.work_dir / "candidates" / set_key(skips[name])
        if (out / SAVED_FILES[0]).is_file() and (out / SAVED_FILES[1]).is_file():
            return ModelFiles(out, *SAVED_FILES)
        return real_model(cfg, opts, inputs, fp32_files, skips[name], out, ctx)

    def verify(name: str) -> bool:
        if name == "INT8 target":
            return result.met
        key = set_key(skips[name])
        if key not in cached:
            ctx.counters.full_evaluations += 1
            cached[key] = simulated_map(cfg, opts, model(name), inputs.heldout, f"verify {name} (held-out)")
            ctx.save()
        met = cached[key] >= result.heldout_target
        result.candidates[name] = {"num_float": len(skips[name]), "verified_map": cached[key], "met": met}
        return met

    chosen = fastest_verified({name: result.latency[name] for name in skips},
                              "INT8 target" if result.met else None, verify)
    if chosen is None or chosen == "INT8 target":
        return None
    return adopt(inputs, result, chosen, skips[chosen], model(chosen), ctx)


def adopt(inputs: TargetInputs, result: TargetResult, chosen: str, skip: list[str], files: ModelFiles,
          ctx: AnalysisContext) -> Path:
    """The candidate `chosen` becomes the target model: its files in the target folder, its float
    layers, verified mAP and latency ratio. Returns its runtime form."""
    out_dir = Path(result.model_dir)
    with atomic_dir(out_dir, create=False) as tmp:
        shutil.copytree(files.model_dir, tmp)
    result.chosen, result.skip, result.num_skipped, result.met = chosen, list(skip), len(skip), True
    result.verified_map = result.candidates[chosen]["verified_map"]
    result.latency_base = [layer for layer in result.latency_base if layer in skip]
    result.search_map = None  # the searched model's: measured again for this one
    fp32_ms = result.latency.get("FP32")
    result.ratio = result.latency[chosen] / fp32_ms if fp32_ms else None
    if chosen == "INT8 all layers":
        return runtime_form(inputs.models, "INT8", inputs.backend)
    return deploy_form(ModelFiles(out_dir, *SAVED_FILES), inputs.backend, ctx.work_dir / "deploy_target" / "chosen")


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
