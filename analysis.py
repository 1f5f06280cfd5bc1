"""Find the layers that break under INT8 and build a model that meets a target mAP.

    python analysis.py --config_path configs/demo/picodet_s_analysis.yaml

Calibrates once with the config's PTQ section (the same settings post_quant.py uses),
ranks every quantized layer by mAP damage on FastEvalDataset ("quantize one": quantize only
it; "revert one": put it back to float in the INT8 model), then, with get_target_quant_model
and target_metric (or --max_drop), measures what each layer costs in float on the deployment
runtime (deploy_backend, OpenVINO by default), searches the float layers that meet the target
at the lowest latency on EvalDataset's search images, verifies the real model on its held-out
images (disjoint: docs/analysis.md) and times it against FP32 and the accuracy-only choice.

Writes to save_dir: ranking.csv/json, sensitivity.png, activation_/weight_distribution
.png/.pdf, distribution_stats.json, analysis.md, <name>_analyzed_ptq.yaml and
target_quant_model/. Results are cached per stage (calibration by model, data and PTQ section;
rankings also by mode; trials by their float layers): an interrupted run resumes, and another
--rank_modes reuses the calibration and every finished trial.

With --workers N the trials run on N Ray workers (a local Ray instance, or the cluster at
--ray_address); the results and the cache are the same as without.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqdet import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common_flags(parser)
    parser.add_argument("--save_dir", type=Path, default=None, help="output folder (default: the config's save_dir)")
    parser.add_argument("--rank_modes", default="quantize,revert",
                        help="comma list of ranking modes: quantize (only that layer INT8, from FP32), revert "
                             "(only that layer back to float, from full INT8); the target search follows "
                             "quantize when it is listed")
    parser.add_argument("--proxy_batches", type=int, default=0,
                        help="calibration batches for the SQNR proxy ranking (default 0: none; it does not predict "
                             "the mAP ranking, see README) - ranked only for the report and as a tie-break")
    cli.add_deploy_threads_flag(parser, "the per-layer float costs and the latency of the target model (config "
                                        "key deploy_backend, default openvino)")
    parser.add_argument("--selection", choices=("latency", "accuracy"), default="latency",
                        help="how the target search picks float layers: latency (mAP damage per ms of float on the "
                             "deployment runtime; default) or accuracy (mAP damage only)")
    parser.add_argument("--max_drop", type=float, default=None,
                        help="target = FP32 mAP - MAX_DROP (0-1 scale), instead of target_metric")
    cli.add_ray_flags(parser, "the per-layer trials (both rankings and the proxy) and the target search's "
                              "simulations (each split over the workers; see --search_width)")
    cli.add_search_width_flag(parser)
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    from ptqdet.analysis.stages import AnalysisOptions, analyze
    from ptqdet.config import ConfigError, load_config
    from ptqdet.report import mAP_points, markdown_table

    cfg = load_config(args.config_path)
    save_dir = args.save_dir or cfg.save_dir
    if save_dir is None:
        raise ConfigError(f"{cfg.path}: set save_dir in the config or pass --save_dir")
    opts = AnalysisOptions(save_dir=save_dir, device=args.devices, threads=args.threads,
                           rank_modes=tuple(m.strip() for m in args.rank_modes.split(",") if m.strip()),
                           proxy_batches=args.proxy_batches, max_drop=args.max_drop, progress=not args.quiet,
                           deploy_threads=args.deploy_threads, latency_aware=args.selection == "latency",
                           parallel=cli.parallel_options(args))
    r = analyze(cfg, opts)
    rows = [["FP32 mAP", mAP_points(r.fp32_map)],
            ["INT8 mAP (all layers; search images when split)", mAP_points(r.int8_map)],
            ["most sensitive layers", ", ".join(r.ranking[:5])],
            ["Spearman proxy vs mAP", ", ".join(f"{m} {v:.2f}" for m, v in r.spearman.items()) or "-"],
            ["calibrations / full evals / fast evals", f"{r.counters.calibrations} / {r.counters.full_evaluations} / "
                                                      f"{r.counters.fast_evaluations}"],
            ["time", f"{r.counters.seconds.get('total', 0):.0f} s"]]
    if r.target:
        t = r.target
        acc = t.accuracy_only
        rows += [["target mAP (EvalDataset; held-out images)",
                  f"{mAP_points(t.target)}; {mAP_points(t.heldout_target)}"],
                 [f"layers kept in float ({t.selection} selection)", t.num_skipped],
                 ["target model mAP, search / held-out images (simulated INT8)",
                  f"{mAP_points(t.search_map)} / {mAP_points(t.verified_map)}"],
                 [f"target model mAP on {t.deployed_runtime} (held-out)",
                  f"{mAP_points(t.deployed_map)}" + (" (differs > 0.3 point)" if t.parity_flag else "")],
                 ["target search rounds / full evaluations", f"{t.search_rounds} / {t.search_evaluations}"],
                 ["target met (held-out)", "yes" if t.met else "NO"],
                 [f"latency FP32 / target INT8 ms ({r.deploy.backend}, {r.deploy.threads} thread(s))",
                  f"{t.latency.get('FP32', 0):.2f} / {t.latency.get('INT8 target', 0):.2f}"],
                 ["target INT8/FP32", f"{t.ratio:.2f}" if t.ratio else "-"]]
        if acc is not None:
            rows.append(["accuracy-only choice: layers in float, INT8/FP32",
                         f"{acc.num_float}, {acc.ratio:.2f}" if acc.ratio else f"{acc.num_float}, -"])
    print(markdown_table(["quantization analysis", "value"], rows))
    print(f"\nreport: {r.files['report']}\nanalyzed config: {r.files['analyzed_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
