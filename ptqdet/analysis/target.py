"""The target stage: search_prefix wired to the trial models, to PTQ and to Paddle Inference."""
from __future__ import annotations

import math

from ..config import ConfigError, PTQDetConfig
from ..metrics import evaluate
from ..model import ModelFiles, Predictor, PredictorOptions, default_threads
from ..quantize import SAVED_FILES, quantize_files
from .context import AnalysisContext
from .results import AnalysisOptions, TargetResult
from .search import search_prefix
from .sensitivity import Evaluator

TARGET_DIR = "target_quant_model"  # paddleslim's Analysis saves its target model under the same name


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


def search_target(cfg: PTQDetConfig, opts: AnalysisOptions, full_eval: Evaluator, fp32_files: ModelFiles,
                  ranking: list[str], target: float, ctx: AnalysisContext) -> TargetResult:
    """Shortest prefix of the ranking to keep in float that meets `target`: binary search on
    EvalDataset (trial models from the one calibration, cached), then the real model (PTQ
    with that skip list, as post_quant.py would make it) verified on EvalDataset, run as the
    search simulated it (fake-quant graph on FP32 kernels), then evaluated on the runtime
    that deploys it (oneDNN INT8 on CPU when Paddle can fuse it)."""
    cached = ctx.section("search").setdefault("tried", {})
    out_dir = opts.save_dir / TARGET_DIR
    threads = opts.threads or default_threads()

    def simulate(k: int) -> float:
        if str(k) not in cached:
            cached[str(k)] = full_eval.evaluate_with_float(ranking[:k])
            ctx.counters.full_evaluations += 1
            ctx.save()
        return cached[str(k)]

    def verify(k: int) -> float:
        skip = list(cfg.skip_tensor_list) + ranking[:k]
        quantize_files(cfg, fp32_files, out_dir, cfg.ptq, skip, opts.device, opts.progress)
        ctx.counters.calibrations += 1
        predictor = Predictor(ModelFiles(out_dir, *SAVED_FILES),
                              PredictorOptions(device=opts.device, threads=threads, mkldnn=False))
        verified = evaluate(predictor, cfg, "EvalDataset", progress=opts.progress, desc="verify target model").map
        ctx.counters.full_evaluations += 1
        return verified

    bar = ctx.bar(None, total=math.ceil(math.log2(len(ranking) + 1)), desc="target search", unit="eval")
    if opts.parallel is None:
        outcome = search_prefix(len(ranking), target, simulate, verify, on_step=bar.update if bar is not None else None)
        rounds = len(outcome.tried)
    else:  # --workers: a k-ary search, k simulations at once on the Ray workers
        from .kary_search import kary_rounds
        from .parallel import search_in_parallel

        if bar is not None:
            bar.reset(total=kary_rounds(len(ranking), opts.parallel.workers))
        outcome, rounds = search_in_parallel(cfg, opts, full_eval, ranking, target, cached, verify, ctx,
                                             on_round=(lambda _: bar.update()) if bar is not None else None)
    if bar is not None:
        bar.close()
    deployed = Predictor(ModelFiles(out_dir, *SAVED_FILES), PredictorOptions(device=opts.device, threads=threads))
    deployed_map = evaluate(deployed, cfg, "EvalDataset", progress=opts.progress, desc="eval on runtime").map
    ctx.counters.full_evaluations += 1
    k = outcome.num_float
    return TargetResult(target=target, skip=ranking[:k], num_skipped=k, simulated_map=outcome.simulated,
                        verified_map=outcome.verified, met=outcome.met, deployed_map=deployed_map,
                        deployed_runtime=deployed.mode, verifications=outcome.verifications,
                        search_evaluations=outcome.evaluations, model_dir=str(out_dir), tried=outcome.tried,
                        search_rounds=rounds)
