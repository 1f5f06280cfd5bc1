"""Find the layers that break under INT8 and build a model that meets a target mAP.

    python analysis.py --config_path configs/demo/picodet_s_analysis.yaml

Calibrates once with the config's PTQ section (the same settings post_quant.py uses),
ranks every quantized layer by mAP damage on FastEvalDataset ("quantize one": quantize only
it; "revert one": put it back to float in the INT8 model) and by a proxy (SQNR of the
detection head outputs on calibration images), then, with get_target_quant_model and
target_metric (or --max_drop), binary-searches the shortest prefix of the "quantize one"
ranking to keep in float and verifies the real model on EvalDataset.

Writes to save_dir: ranking.csv/json, sensitivity.png, activation_/weight_distribution
.png/.pdf, distribution_stats.json, analysis.md, <name>_analyzed_ptq.yaml and
target_quant_model/. Results are cached per config hash: an interrupted run resumes.

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
    parser.add_argument("--proxy_batches", type=int, default=2,
                        help="calibration batches for the SQNR proxy ranking (default 2; 0: no proxy ranking)")
    parser.add_argument("--max_drop", type=float, default=None,
                        help="target = FP32 mAP - MAX_DROP (0-1 scale), instead of target_metric")
    cli.add_ray_flags(parser, "the per-layer trials (both rankings and the proxy) and the target search's "
                              "simulations (a k-ary search, k = N)")
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
                           parallel=cli.parallel_options(args))
    r = analyze(cfg, opts)
    rows = [["FP32 mAP", mAP_points(r.fp32_map)], ["INT8 mAP (all layers)", mAP_points(r.int8_map)],
            ["most sensitive layers", ", ".join(r.ranking[:5])],
            ["Spearman proxy vs mAP", ", ".join(f"{m} {v:.2f}" for m, v in r.spearman.items()) or "-"],
            ["calibrations / full evals / fast evals", f"{r.counters.calibrations} / {r.counters.full_evaluations} / "
                                                      f"{r.counters.fast_evaluations}"],
            ["time", f"{r.counters.seconds.get('total', 0):.0f} s"]]
    if r.target:
        t = r.target
        rows += [["target mAP", mAP_points(t.target)],
                 ["layers kept in float", t.num_skipped],
                 ["target search rounds / full evaluations", f"{t.search_rounds} / {t.search_evaluations}"],
                 ["target model mAP (verified, simulated INT8)", mAP_points(t.verified_map)],
                 [f"target model mAP on {t.deployed_runtime}", mAP_points(t.deployed_map)],
                 ["target met", "yes" if t.met else "NO"]]
    print(markdown_table(["quantization analysis", "value"], rows))
    print(f"\nreport: {r.files['report']}\nanalyzed config: {r.files['analyzed_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
