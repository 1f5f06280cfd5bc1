"""ptqdet's analysis beside paddleslim's `Analysis` on the same model, data and target: each
side run and measured (wall time, calibrations, evaluations, layers kept in float, final mAP on
EvalDataset, target met), and the comparison as a table with its notes (tools/bench_analysis.py
is its command line)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

OURS, THEIRS = "ptqdet analysis", "paddleslim Analysis"


def layers_in_float(cfg, model_dir: Path) -> int:
    """Quantizable layers (PTQ.quantizable_op_type) that the saved model does not quantize."""
    from ..files import resolve_model_files
    from ..quantize import layer_weights, quantized_weights

    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    total = set(layer_weights(fp32, list(cfg.ptq.quantizable_op_type)))
    return len(total - quantized_weights(resolve_model_files(model_dir)))


def final_maps(cfg, model_dir: Path, threads: int | None, progress: bool) -> dict[str, Any]:
    """mAP on EvalDataset: simulated INT8 (fake-quant graph on FP32 kernels, as ptqdet verifies)
    and on the runtime that deploys it (oneDNN INT8 when Paddle can fuse it)."""
    from ..files import resolve_model_files
    from ..model import BackendOptions
    from ..pipeline import EvalRequest, evaluate_model

    files = resolve_model_files(model_dir)
    start = time.perf_counter()
    simulated = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(threads=threads, mkldnn=False),
                                                progress=progress)).result
    runtime_eval = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(threads=threads), progress=progress))
    runtime, mode = runtime_eval.result, runtime_eval.runtime
    return {"simulated_map": simulated.map, "runtime_map": runtime.map, "runtime": mode,
            "seconds": time.perf_counter() - start}


def run_ours(cfg, out: Path, max_drop: float | None, threads: int | None, progress: bool) -> dict[str, Any]:
    from .stages import AnalysisOptions, analyze

    # quantize ranking only, no proxy ranking, no distribution plots: the work paddleslim's
    # metric_error_analyse does
    ours_cfg = dataclasses.replace(cfg, plot_hist=False, get_target_quant_model=True)
    opts = AnalysisOptions(save_dir=out, threads=threads, rank_modes=("quantize",), proxy_batches=0,
                           max_drop=max_drop, progress=progress)
    start = time.perf_counter()
    r = analyze(ours_cfg, opts)
    seconds = time.perf_counter() - start
    t, c = r.target, r.counters
    return {"seconds": seconds, "calibrations": c.calibrations, "fast_evaluations": c.fast_evaluations,
            "full_evaluations": c.full_evaluations, "proxy_runs": c.proxy_runs,
            "layers_in_float": layers_in_float(cfg, Path(t.model_dir)), "skip": t.skip,
            "fp32_map": r.fp32_map, "int8_map": r.int8_map, "target": t.target,
            "final_map": t.verified_map, "runtime_map": t.deployed_map, "runtime": t.deployed_runtime,
            "met": bool(t.met), "model_dir": t.model_dir, "ranking": r.ranking,
            "phase_seconds": {k: round(v, 1) for k, v in c.seconds.items() if k != "last_layer_s"}}


def run_theirs(cfg, out: Path, target: float, fp32_map: float, max_layers: int | None, threads: int | None,
               progress: bool, verbose: bool) -> dict[str, Any]:
    from .reference import run_reference_analysis

    eval_key = "FastEvalDataset" if cfg.has_dataset("FastEvalDataset") else "EvalDataset"
    r = run_reference_analysis(cfg, cfg.model_dir, out, target_drop=fp32_map - target, eval_key=eval_key,
                               max_layers=max_layers, progress=progress, verbose=verbose)
    c = r.counters
    row: dict[str, Any] = {
        "seconds": c.seconds["total"], "calibrations": c.calibrations, "fast_evaluations": c.evaluations,
        "full_evaluations": 0, "analysed_layers": c.analysed_layers, "eval_dataset": eval_key,
        "fast_fp32_map": r.fp32_map, "fast_int8_map": r.int8_map, "fast_target": r.target, "target": target,
        "found": r.found, "skip": r.skip if r.found else None, "ranking": r.ranking, "max_layers": max_layers,
        "phase_seconds": {k: round(v, 1) for k, v in c.seconds.items()}, "model_dir": str(r.model_dir),
        "layers_in_float": None, "final_map": None, "runtime_map": None, "runtime": None, "met": False}
    if r.found:  # evaluated by the benchmark, outside paddleslim's time and counts
        maps = final_maps(cfg, r.model_dir, threads, progress)
        row.update(layers_in_float=layers_in_float(cfg, r.model_dir), final_map=maps["simulated_map"],
                   runtime_map=maps["runtime_map"], runtime=maps["runtime"], met=maps["simulated_map"] >= target,
                   benchmark_eval_seconds=round(maps["seconds"], 1), benchmark_full_evaluations=2)
    return row


def fp32_reference(cfg, threads: int | None, progress: bool) -> float:
    """FP32 mAP on EvalDataset (only needed when ptqdet's analysis, which measures it, is skipped)."""
    from ..files import resolve_model_files
    from ..model import BackendOptions
    from ..pipeline import EvalRequest, evaluate_model

    files = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    request = EvalRequest(files, options=BackendOptions(threads=threads), progress=progress)
    return evaluate_model(cfg, request).result.map


def table(results: dict[str, dict[str, Any]]) -> str:
    from ..report import mAP_points, markdown_table

    rows = []
    for name, r in results.items():
        evals = f"{r['fast_evaluations']} / {r['full_evaluations']}"
        if r.get("benchmark_full_evaluations"):
            evals += f" (+{r['benchmark_full_evaluations']} ³)"
        wall = f"{r['seconds']:.0f} s" if r["seconds"] < 600 else f"{r['seconds'] / 60:.1f} min"
        rows.append([name, wall, r["calibrations"], evals, r["layers_in_float"],
                     mAP_points(r["final_map"]), mAP_points(r["runtime_map"]),
                     "yes" if r["met"] else "no"])
    return markdown_table(["analysis", "wall time", "calibrations", "evaluations (fast / full)", "layers kept in float",
                           "final mAP ¹", "mAP on runtime ²", "target met"], rows)


def notes(results: dict[str, dict[str, Any]], target: float) -> list[str]:
    from ..report import mAP_points

    theirs = results.get(THEIRS)
    lines = [f"Target: mAP {mAP_points(target)} on EvalDataset (FP32 mAP minus the allowed drop). Fast evaluations: "
             "FastEvalDataset; full: EvalDataset.",
             "¹ mAP on EvalDataset of the final model, fake-quant graph on FP32 kernels (as ptqdet verifies); "
             "target met is judged on it.",
             "² the same model on the runtime that deploys it (Paddle Inference with oneDNN: INT8 kernels when it "
             "can fuse them, else simulated INT8)."]
    if theirs is not None:
        lines += ["³ evaluations run by this benchmark to measure paddleslim's final model, not by paddleslim; "
                  "their time is not in its wall time.",
                  f"paddleslim Analysis: eval_function = ptqdet's mAP on {theirs['eval_dataset']}; its target there is "
                  f"its FP32 mAP {mAP_points(theirs['fast_fp32_map'])} minus the same drop = "
                  f"{mAP_points(theirs['fast_target'])}; same PTQ settings except onnx_format forced to False "
                  "(paddleslim 2.6.0's Analysis calls an undefined name with onnx_format=True); "
                  f"{theirs['analysed_layers']} layers analysed; its target search starts with one layer in float "
                  "(it never tries the model with all layers quantized)."]
        if theirs.get("max_layers") is not None:
            lines.append(f"**--max_layers {theirs['max_layers']} was used (debugging): paddleslim analysed only its "
                         "first layers; this is not a valid comparison.**")
        if not theirs["found"]:
            lines.append("paddleslim's get_target_quant_model found no model meeting its target.")
    if OURS in results:
        lines.append("ptqdet analysis: `quantize` ranking without the SQNR proxy (so layers whose quantization "
                     "does not move the fast mAP tie, in graph order), no distribution plots; "
                     "its full evaluations include the FP32 and INT8 references, the binary search, the verification "
                     "and the runtime evaluation.")
    return lines
