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
from ptqdet.analysis.versus import OURS, THEIRS, fp32_reference, notes, run_ours, run_theirs, table  # noqa: E402

DEFAULT_CONFIG = Path("configs/demo/picodet_s_analysis.yaml")
DEFAULT_OUT = Path("outputs/bench_analysis")


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
