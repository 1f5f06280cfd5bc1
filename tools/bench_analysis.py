"""ptqdet's analysis vs paddleslim's `Analysis`, in one run, on the same model, data and target.

    python tools/bench_analysis.py                       # the demo PicoDet-s (configs/demo/picodet_s_analysis.yaml)

Both sides get the config's FP32 model, its `PTQ:` section, its calibration images
(TrainDataset), its FastEvalDataset for ranking layers and the same target (config
target_metric, or FP32 mAP - --max_drop):

  ptqdet analysis      analyze(): one calibration, "quantize one" mAP ranking on FastEvalDataset,
                       binary search on EvalDataset, verified target model (analysis.py's path)
  paddleslim Analysis  paddleslim 2.6.0 Analysis.metric_error_analyse() + get_target_quant_model():
                       one calibration and one FastEvalDataset evaluation per layer, then per
                       prefix of its ranking; its final model is then evaluated on EvalDataset

Prints a table (wall time, calibrations, evaluations, layers kept in float, final mAP on
EvalDataset, target met) and writes OUT/bench_analysis.md and OUT/bench_analysis.json, with
the machine, its load average and the date, and the table to docs/results/analysis.md.
Both sides start cold: OUT/ptqdet_analysis and
OUT/paddleslim_analysis are emptied first. paddleslim calibrates once per layer and per step
of its target search: run the benchmark on an idle machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptqdet import cli  # noqa: E402

DEFAULT_CONFIG = Path("configs/demo/picodet_s_analysis.yaml")
DEFAULT_OUT = Path("outputs/bench_analysis")
OURS, THEIRS = "ptqdet analysis", "paddleslim Analysis"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG,
                        help=f"analysis config: model, PTQ section, datasets, target_metric (default {DEFAULT_CONFIG})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder: bench_analysis.md/.json and both analyses' files (default {DEFAULT_OUT})")
    parser.add_argument("--max_drop", type=float, default=None,
                        help="target = FP32 mAP on EvalDataset - MAX_DROP (0-1 scale), instead of the config's "
                             "target_metric")
    parser.add_argument("--skip_ours", action="store_true", help="do not run ptqdet's analysis (debugging)")
    parser.add_argument("--skip_paddleslim", action="store_true", help="do not run paddleslim's Analysis (debugging)")
    parser.add_argument("--max_layers", type=int, default=None,
                        help="debugging only: paddleslim analyses only its first N layers (the table says so; "
                             "not a valid comparison)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of Paddle Inference evaluations (default: all cores, at most 4; "
                             "env PTQDET_THREADS)")
    parser.add_argument("--verbose", action="store_true", help="keep paddleslim's per-layer INFO log")
    parser.add_argument("--results", default="analysis",
                        help="also write the table under a header (date, CPU, command, idle) to docs/results/<name>.md "
                             "(default analysis; '' for none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def layers_in_float(cfg, model_dir: Path) -> int:
    """Quantizable layers (PTQ.quantizable_op_type) that the saved model does not quantize."""
    from ptqdet.files import resolve_model_files
    from ptqdet.quantize import layer_weights, quantized_weights

    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    total = set(layer_weights(fp32, list(cfg.ptq.quantizable_op_type)))
    return len(total - quantized_weights(resolve_model_files(model_dir)))


def final_maps(cfg, model_dir: Path, threads: int | None, progress: bool) -> dict[str, Any]:
    """mAP on EvalDataset: simulated INT8 (fake-quant graph on FP32 kernels, as ptqdet verifies)
    and on the runtime that deploys it (oneDNN INT8 when Paddle can fuse it)."""
    from ptqdet.files import resolve_model_files
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model

    files = resolve_model_files(model_dir)
    start = time.perf_counter()
    simulated = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(threads=threads, mkldnn=False),
                                                progress=progress)).result
    runtime_eval = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(threads=threads), progress=progress))
    runtime, mode = runtime_eval.result, runtime_eval.runtime
    return {"simulated_map": simulated.map, "runtime_map": runtime.map, "runtime": mode,
            "seconds": time.perf_counter() - start}


def run_ours(cfg, out: Path, max_drop: float | None, threads: int | None, progress: bool) -> dict[str, Any]:
    from ptqdet.analysis.stages import AnalysisOptions, analyze

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
    from ptqdet.analysis.reference import run_reference_analysis

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
    from ptqdet.files import resolve_model_files
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model

    files = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    request = EvalRequest(files, options=BackendOptions(threads=threads), progress=progress)
    return evaluate_model(cfg, request).result.map


def table(results: dict[str, dict[str, Any]]) -> str:
    from ptqdet.report import mAP_points, markdown_table

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
    from ptqdet.report import mAP_points

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


def publish(name: str, body: str, command: str, load_at_start: float) -> None:
    """The table and its notes under a results header in docs/results/<name>.md ('' : none)."""
    from ptqdet.report import IDLE_LOAD_PER_CORE, write_results

    if name:
        idle = load_at_start < IDLE_LOAD_PER_CORE * (os.cpu_count() or 1)
        print(f"results: {write_results(name, 'Analysis benchmark: ptqdet vs paddleslim', body, command, idle)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ptqdet.config import ConfigError, load_config

    if args.skip_ours and args.skip_paddleslim:
        raise ConfigError("--skip_ours and --skip_paddleslim together: nothing to run")
    if args.max_layers is not None and args.max_layers < 1:
        raise ConfigError("--max_layers must be a positive integer")
    cli.quiet_libraries()
    cfg = load_config(args.config_path)
    from ptqdet.analysis.stages import AnalysisOptions, check_inputs
    from ptqdet.analysis.target import target_metric
    from ptqdet.report import atomic_write_text, machine_info, mAP_points, write_json

    progress = not args.quiet
    out = args.out
    if cfg.target_metric is None and args.max_drop is None:
        raise ConfigError(f"{cfg.path}: set target_metric in the config or pass --max_drop")
    check_inputs(dataclasses.replace(cfg, get_target_quant_model=True),
                 AnalysisOptions(save_dir=out / "ptqdet_analysis", max_drop=args.max_drop))
    load = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    for sub in ("ptqdet_analysis", "paddleslim_analysis"):  # both sides start cold
        shutil.rmtree(out / sub, ignore_errors=True)

    results: dict[str, dict[str, Any]] = {}
    fp32_map = target = None
    if not args.skip_ours:
        print(f"== {OURS}", flush=True)
        results[OURS] = run_ours(cfg, out / "ptqdet_analysis", args.max_drop, args.threads, progress)
        fp32_map, target = results[OURS]["fp32_map"], results[OURS]["target"]
    if not args.skip_paddleslim:
        if fp32_map is None:
            fp32_map = fp32_reference(cfg, args.threads, progress)
            target = target_metric(dataclasses.replace(cfg, get_target_quant_model=True), args.max_drop, fp32_map)
        print(f"== {THEIRS}", flush=True)
        results[THEIRS] = run_theirs(cfg, out / "paddleslim_analysis", target, fp32_map, args.max_layers, args.threads,
                                     progress, args.verbose)

    text = table(results)
    footnotes = notes(results, target)
    machine = machine_info()
    machine["load_average_at_start"] = [round(v, 2) for v in load]
    header = (f"Config `{cfg.path}`; PTQ: algo {cfg.ptq.algo}, {cfg.ptq.batch_size}x{cfg.ptq.batch_nums} calibration "
              f"images; FP32 mAP {mAP_points(fp32_map)} on EvalDataset. {started}, {machine['cpu']}, "
              f"{machine['cores']} cores, load average at start {machine['load_average_at_start'][0]}, "
              f"Paddle {machine['paddle']}.")
    command = " ".join(["python tools/bench_analysis.py", *(sys.argv[1:] if argv is None else argv)])
    md = "\n".join(["# Analysis benchmark: ptqdet vs paddleslim", "", header, "", text, "",
                    *[f"{n}  " for n in footnotes], "", f"Command: `{command}`", ""])
    data = {"command": command, "config": str(cfg.path), "ptq": cfg.ptq.to_dict(), "fp32_map": fp32_map,
            "target": target,
            "max_drop": args.max_drop, "max_layers": args.max_layers, "started": started, "machine": machine,
            "results": results, "notes": footnotes}
    md_path = atomic_write_text(out / "bench_analysis.md", md)
    publish(args.results, "\n".join([header, "", text, "", *[f"{n}  " for n in footnotes]]), command, load[0])
    json_path = write_json(out / "bench_analysis.json", data)
    print("\n" + text + "\n\n" + "\n".join(footnotes))
    print(f"\nreport: {md_path}\njson: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
