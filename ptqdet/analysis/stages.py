"""analysis.py's pipeline: calibrate once, rank layers (mAP and proxy), search the target model.

Stages of `analyze`, in order:
    split_eval         (heldout.py) EvalDataset's search images and held-out images, disjoint
    reference_fp32     FP32 mAP on EvalDataset and both parts (Paddle Inference): the target is checked first
    calibrate          one calibration, all quantizable layers but cfg.skip_tensor_list -> QuantGraph
    int8_references    all-INT8 and FP32 mAP of the trial models (search images and the fast set)
    rank_layers        per layer, mAP damage on the fast set and SQNR loss (proxy) per mode
    deploy_stage       (deploy.py) FP32/INT8 models on the deployment runtime, cost of float per layer
    search_target      (target.py) float layers meeting the target at the lowest latency (search images),
                       verified on the held-out images, timed on the deployment runtime
    distribution_plots (distributions.py) and write_outputs (outputs.py)
Every result is cached in the AnalysisContext: an interrupted run resumes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import files as model_files
from .. import program as model_program
from ..backends import open_backend
from ..config import ConfigError, PTQDetConfig, PTQSettings
from ..data import build_source, check_dataset, feed_from_batch
from ..files import ModelFiles, resolve_model_files
from ..metrics import evaluate
from ..model import BackendOptions
from ..quantize import SAVED_FILES, quantize_files
from .context import CACHE_VERSION, AnalysisContext, cache_key
from .deploy import deploy_backend, deploy_models_in_task, deploy_stage
from .distributions import distribution_plots
from .graph import QuantGraph
from .heldout import EvalSplit, split_eval, split_source
from .outputs import write_outputs
from .results import AnalysisOptions, AnalysisResult, DeployInfo, TargetResult
from .search import RANK_MODES, order_layers, search_mode
from .sensitivity import Evaluator, metric_ranking, proxy_ranking, spearman
from .target import TargetInputs, search_target, set_key, target_metric


@dataclass
class Evaluators:
    """Trial-model mAP on EvalDataset (full) and on FastEvalDataset (fast; the full one when there is none)."""

    full: Evaluator
    fast: Evaluator


def check_inputs(cfg: PTQDetConfig, opts: AnalysisOptions) -> ModelFiles:
    files = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    model_files.check_output_dir(opts.save_dir, files.model_dir, replaced=False)  # analysis adds files, keeps its cache
    model_program.check_config_model(cfg, files)
    check_dataset(cfg, "TrainDataset", need_annotations=False)
    check_dataset(cfg, "EvalDataset")
    if cfg.has_dataset("FastEvalDataset"):
        check_dataset(cfg, "FastEvalDataset")
    if cfg.get_target_quant_model and cfg.target_metric is None and opts.max_drop is None:
        raise ConfigError(f"{cfg.path}: get_target_quant_model needs target_metric (or --max_drop)")
    bad = [m for m in opts.rank_modes if m not in RANK_MODES]
    if bad or not opts.rank_modes:
        raise ConfigError(f"rank modes {bad or '(none)'}: choose from {RANK_MODES}")
    return files


def open_context(cfg: PTQDetConfig, opts: AnalysisOptions) -> AnalysisContext:
    """The work folder of this model, data and PTQ section. What depends on more is a section of
    its results keyed by that too (context.py): a ranking by its mode (and proxy batches), a
    search's trials by their float-layer set, the layer costs by runtime and threads."""
    return AnalysisContext.open(opts.save_dir, cache_key(cfg, {"v": CACHE_VERSION}), opts.progress)


def reference_fp32(cfg: PTQDetConfig, opts: AnalysisOptions, fp32_files: ModelFiles, split: EvalSplit,
                   ctx: AnalysisContext) -> dict[str, float]:
    """FP32 mAP with Paddle Inference (cached) on EvalDataset ("all"), its search images and its
    held-out images (the same as "all" when it is not split)."""
    refs = ctx.section("reference")
    if "fp32_full" not in refs:
        predictor = open_backend("paddle", fp32_files, BackendOptions(device=opts.device, threads=opts.threads))
        refs["fp32_full"] = evaluate(predictor, cfg, "EvalDataset", progress=opts.progress, desc="eval FP32").map
        for name, anno in (("search", split.search_anno), ("heldout", split.heldout_anno)):
            refs[f"fp32_{name}"] = (evaluate(predictor, cfg, source=split_source(cfg, anno), progress=opts.progress,
                                             desc=f"eval FP32 ({name})").map if anno else refs["fp32_full"])
        ctx.counters.full_evaluations += 2  # EvalDataset, then its two parts
        ctx.save()
    return {"all": refs["fp32_full"], "search": refs["fp32_search"], "heldout": refs["fp32_heldout"]}


def calibrate(cfg: PTQDetConfig, opts: AnalysisOptions, fp32_files: ModelFiles, ctx: AnalysisContext) -> QuantGraph:
    """One calibration of every quantizable layer but cfg.skip_tensor_list (kept in the work
    folder), as a QuantGraph. Recovery (PTQ.equalize_depthwise) runs first: layers are ranked
    for what recovery could not fix, and a reverted layer reads the recovered FP32 model's
    weights (the same function as the original model's)."""
    calibrated = ModelFiles(ctx.work_dir / "calibrated", *SAVED_FILES)
    recovered = ModelFiles(ctx.work_dir / "recovered_fp32", *SAVED_FILES) if cfg.ptq.equalize_depthwise else fp32_files
    settings = PTQSettings(**{**cfg.ptq.to_dict(), "onnx_format": False})
    if not calibrated.model_path.is_file() or not recovered.model_path.is_file():
        with ctx.timed("calibration"):
            quantize_files(cfg, fp32_files, calibrated.model_dir, settings, cfg.skip_tensor_list, opts.device,
                           opts.progress, recovered_dir=recovered.model_dir if recovered != fp32_files else None)
            ctx.counters.calibrations += 1
    return QuantGraph(calibrated, recovered)


def build_evaluators(cfg: PTQDetConfig, graph: QuantGraph, split: EvalSplit) -> Evaluators:
    """`full`: the search images of EvalDataset (heldout.py); `fast`: FastEvalDataset, else those."""
    full = Evaluator(cfg, graph, split_source(cfg, split.search_anno))
    if not cfg.has_dataset("FastEvalDataset"):
        return Evaluators(full, full)
    return Evaluators(full, Evaluator(cfg, graph, build_source(cfg, "FastEvalDataset")))


def int8_references(evals: Evaluators, layers: list[str], ctx: AnalysisContext, search: bool = True
                    ) -> dict[str, float]:
    """mAP of the trial models with every layer in float (FP32) and with none (INT8) on the fast
    set, and (search) the INT8 one on the search images (cached); returns the "reference" section.
    --workers leaves the search images' one (search=False) to int8_search_reference, which the
    driver runs while the workers rank (the rankings do not need it)."""
    refs = ctx.section("reference")
    if "int8_fast" not in refs:
        refs["fp32_fast"] = evals.fast.evaluate_with_float(layers)
        refs["int8_fast"] = evals.fast.evaluate_with_float([])
        ctx.counters.fast_evaluations += 2
        ctx.save()
    if search:
        int8_search_reference(evals, ctx)
    return refs


def int8_search_reference(evals: Evaluators, ctx: AnalysisContext) -> float:
    """mAP of the all-INT8 trial model on the search images (cached; also the target search's k = 0)."""
    refs = ctx.section("reference")
    if "int8_full" not in refs:
        refs["int8_full"] = evals.full.evaluate_with_float([])
        ctx.section("trials_search")[set_key([])] = refs["int8_full"]
        ctx.counters.full_evaluations += 1
        ctx.save()
    return refs["int8_full"]


def calibration_feeds(cfg: PTQDetConfig, batches: int) -> list[dict[str, np.ndarray]]:
    """The first `batches` (at least 1) batches of TrainDataset's images, as model feeds."""
    max_images = max(batches, 1) * int(cfg.ppdet["EvalReader"]["batch_size"])
    source = build_source(cfg, "TrainDataset", images_only=True)
    return [feed_from_batch(b, cfg.feed_names) for b in source.batches(max_images=max_images)]


def rank_layers(cfg: PTQDetConfig, opts: AnalysisOptions, graph: QuantGraph, evals: Evaluators,
                refs: dict[str, float], ctx: AnalysisContext, beside: Callable[[], None] | None = None
                ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], list[dict[str, np.ndarray]]]:
    """Per mode, the mAP damage (fast set) and the proxy's SQNR loss of every layer (no proxy
    with proxy_batches 0); also returns the feeds the proxy ran on. beside: driver work that
    --workers runs while the workers rank (rank_in_parallel); ignored without --workers."""
    layers = list(graph.layers)
    references = {mode: refs["int8_fast"] if mode == "revert" else refs["fp32_fast"] for mode in opts.rank_modes}
    proxy_scores: dict[str, dict[str, float]] = {}
    with ctx.timed("proxy_ranking"):
        feeds = calibration_feeds(cfg, opts.proxy_batches)
    if opts.parallel is not None:  # --workers: every trial on Ray workers, into the cache the loops below read
        from .parallel import rank_in_parallel

        with ctx.timed("parallel_ranking"):
            rank_in_parallel(cfg, opts, graph, evals.fast, references, feeds, ctx, beside)
    with ctx.timed("proxy_ranking"):
        for mode in opts.rank_modes if opts.proxy_batches > 0 else ():
            proxy_scores[mode] = proxy_ranking(graph, feeds, layers, mode, ctx)
            ctx.counters.proxy_runs += len(layers)
    metric_scores: dict[str, dict[str, float]] = {}
    with ctx.timed("metric_ranking"):
        for mode in opts.rank_modes:
            metric_scores[mode] = metric_ranking(evals.fast, layers, mode, references[mode], ctx)
    return metric_scores, proxy_scores, feeds


def run_target(cfg: PTQDetConfig, opts: AnalysisOptions, fp32_files: ModelFiles, parts: dict[str, Any],
               target: float, ctx: AnalysisContext) -> TargetResult:
    """The target stage (target.py) on the search/held-out split, for the deployment runtime."""
    deploy: DeployInfo = parts["deploy"]
    mode = search_mode(parts["metric_scores"])
    inputs = TargetInputs(search=parts["evals"].full, heldout=split_source(cfg, parts["split"].heldout_anno),
                          fp32=parts["fp32"], int8_search=parts["refs"]["int8_full"], ranking=parts["ranking"],
                          damage=parts["metric_scores"][mode], backend=deploy.backend, models=deploy.models,
                          feed=deploy.feed, costs={n: c["cost_ms"] for n, c in deploy.layer_costs.items()},
                          base=list(deploy.base))
    with ctx.timed("target_search"):
        return search_target(cfg, opts, inputs, fp32_files, target, ctx)


def start_deploy_models(cfg: PTQDetConfig, opts: AnalysisOptions, ctx: AnalysisContext) -> Any:
    """--workers with a target: the deployment models (deploy.deploy_models: a PTQ in QDQ form
    and ONNX exports, mostly one core) started in a Ray task of their own, so that they run
    while this process calibrates (one core) and the workers rank; None otherwise (deploy_stage
    makes them). Returns the task's object ref."""
    if opts.parallel is None or (not cfg.get_target_quant_model and opts.max_drop is None):
        return None
    from ..ray_pool import start_beside

    return start_beside(opts.parallel, opts.progress, deploy_models_in_task, Path(cfg.path).resolve(), Path.cwd(),
                        (ctx.work_dir / "deploy").resolve(), deploy_backend(cfg, opts))


def analyze(cfg: PTQDetConfig, opts: AnalysisOptions) -> AnalysisResult:
    """Calibrate once, rank every quantized layer, search the target model (when asked), write
    the report and the analyzed config to opts.save_dir."""
    fp32_files = check_inputs(cfg, opts)
    t0 = time.perf_counter()
    ctx = open_context(cfg, opts)
    deploying = start_deploy_models(cfg, opts, ctx)
    split = split_eval(cfg, ctx.work_dir)
    with ctx.timed("reference_fp32"):
        fp32 = reference_fp32(cfg, opts, fp32_files, split, ctx)
    target = target_metric(cfg, opts.max_drop, fp32["all"])
    graph = calibrate(cfg, opts, fp32_files, ctx)
    layers = list(graph.layers)
    with ctx.timed("decode_images"):
        evals = build_evaluators(cfg, graph, split)
    with ctx.timed("int8_references"):
        refs = int8_references(evals, layers, ctx, search=opts.parallel is None)
    made: dict[str, Any] = {}  # --workers: the deployment models, made while the workers rank

    def beside_ranking() -> None:  # --workers: the driver's own work while the workers rank
        with ctx.timed("int8_references"):
            int8_search_reference(evals, ctx)
        if deploying is not None and target is not None:
            import ray

            with ctx.timed("deploy_models_wait"):
                made["models"] = ray.get(deploying)

    metric_scores, proxy_scores, feeds = rank_layers(cfg, opts, graph, evals, refs, ctx,
                                                     beside_ranking if opts.parallel is not None else None)
    ranking = order_layers(layers, metric_scores, proxy_scores)
    result = AnalysisResult(fp32_map=refs["fp32_full"], int8_map=refs["int8_full"], ranking=ranking,
                            metric_scores=metric_scores, proxy_scores=proxy_scores,
                            spearman={m: spearman(metric_scores[m], proxy_scores[m]) for m in proxy_scores},
                            counters=ctx.counters, op_types={n: graph.layers[n].op_type for n in layers})
    if target is not None:
        result.deploy = deploy_stage(cfg, opts, ctx, made.get("models"))
        result.deploy.split, result.deploy.fp32_maps = split.describe(), fp32
        parts = {"deploy": result.deploy, "metric_scores": metric_scores, "evals": evals, "split": split,
                 "fp32": fp32, "refs": refs, "ranking": ranking}
        result.target = run_target(cfg, opts, fp32_files, parts, target, ctx)
    with ctx.timed("plots"):
        if cfg.plot_hist:
            highlight = set(result.target.skip) if result.target else set(ranking[:5])
            result.files.update(distribution_plots(graph, feeds, highlight, opts.save_dir))
    ctx.counters.seconds["total"] = time.perf_counter() - t0
    result.files.update(write_outputs(cfg, opts.save_dir, result))
    return result
