"""Quantize an exported PaddleDetection model to INT8 with post-training quantization.

    python post_quant.py --config_path configs/demo/picodet_s_ptq.yaml --save_dir outputs/picodet_s_ptq

Reads model_dir, the calibration images (TrainDataset) and the PTQ section of the config;
writes model.pdmodel, model.pdiparams (and infer_cfg.yml) to --save_dir, plus
ptq_report.json. With --deploy openvino (or onnxruntime) it also writes the INT8 model in the
form that runtime loads (<save_dir>/openvino: the QDQ ONNX export). With --eval it measures FP32
and INT8 mAP on EvalDataset and their latency, on the --deploy runtime (Paddle Inference
without it), and writes the table to <save_dir>/deploy_report.md:

    python post_quant.py --config_path configs/template_ptq.yaml --save_dir outputs/my_int8 --eval --deploy openvino

With --recipe_search it tries a grid of PTQ recipes (calibration algorithm, weight
quantization, recovery methods, calibration batches), ranks them by mAP on FastEvalDataset,
verifies the best on EvalDataset and writes its model and config; --workers N runs the
trials side by side on Ray.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqdet import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common_flags(parser)
    parser.add_argument("--save_dir", required=True, type=Path, help="output folder of the INT8 model (not model_dir)")
    parser.add_argument("--algo", default=None,
                        help="activation calibration algorithm, overrides PTQ.algo: "
                             "KL, hist, avg, mse, emd, abs_max, min_max, ptf")
    parser.add_argument("--eval", action="store_true",
                        help="also measure FP32 and INT8 mAP on EvalDataset and their latency (batch 1, in "
                             "alternation), on the --deploy runtime (default: Paddle Inference); every row names "
                             "its runtime")
    parser.add_argument("--deploy", default=None, choices=("openvino", "onnxruntime", "paddle"),
                        help="the runtime the INT8 model is deployed on: writes its form of the model "
                             "(<save_dir>/openvino or <save_dir>/onnx: the QDQ ONNX export), and --eval measures "
                             "there; openvino is the recommended CPU runtime; needs PTQ.onnx_format: True")
    cli.add_deploy_threads_flag(parser, "the latency runs of --eval")
    search = parser.add_argument_group("PTQ recipe search (--recipe_search)")
    search.add_argument("--recipe_search", action="store_true",
                        help="try every combination of the four lists below (the config's PTQ section otherwise), "
                             "rank by mAP on FastEvalDataset, verify the best on EvalDataset; writes its model to "
                             "--save_dir, its config (<config>_recipe_ptq.yaml) and recipe_search.{md,json} there")
    search.add_argument("--algos", default=None,
                        help="comma list of calibration algorithms (default: the config's PTQ.algo and mse)")
    search.add_argument("--weight_quant", default=None,
                        help="comma list of weight quantization types: channel_wise_abs_max, abs_max "
                             "(default: the config's)")
    search.add_argument("--recovery", default="none,equalize",
                        help="comma list of recovery methods: none, equalize, bias_correction, adaround, brecq, "
                             "qdrop; a+b combines two (default: none,equalize)")
    search.add_argument("--batch_nums", default=None,
                        help="comma list of calibration batch counts (default: the config's PTQ.batch_nums)")
    cli.add_ray_flags(search, "the recipe trials")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    if args.recipe_search:
        return recipe_search(args)
    if args.workers is not None or args.ray_address:
        from ptqdet.config import ConfigError

        raise ConfigError("--workers and --ray_address need --recipe_search")
    from ptqdet.config import PTQ_ALGOS, ConfigError, load_config
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import QuantizeRequest, quantize_and_report

    if args.algo is not None and args.algo not in PTQ_ALGOS:
        raise ConfigError(f"--algo {args.algo!r} is not one of {', '.join(PTQ_ALGOS)}")
    cfg = load_config(args.config_path)
    request = QuantizeRequest(args.save_dir, algo=args.algo, evaluate=args.eval, deploy=args.deploy,
                              deploy_threads=args.deploy_threads,
                              options=BackendOptions(device=args.devices, threads=args.threads),
                              progress=not args.quiet)
    report = quantize_and_report(cfg, request)
    print(report.table)
    print(f"\nINT8 model: {args.save_dir}   report: {report.json_path}")
    return 0


def recipe_search(args: argparse.Namespace) -> int:
    from ptqdet.config import load_config
    from ptqdet.recipe_search import grid_from_flags, search_recipes, summary_table

    cfg = load_config(args.config_path)
    grid = grid_from_flags(cfg, args.algos, args.weight_quant, args.recovery, args.batch_nums)
    result = search_recipes(cfg, grid, args.save_dir, cli.parallel_options(args), device=args.devices,
                            threads=args.threads, progress=not args.quiet)
    print(summary_table(result))
    print(f"\nbest recipe's model: {args.save_dir}   config: {result.files.get('config', '-')}   "
          f"report: {result.files['report']}")
    return 0 if result.best is not None else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
