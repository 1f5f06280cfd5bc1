"""Quantize an exported PaddleDetection model to INT8 with post-training quantization.

    python post_quant.py --config_path configs/demo/picodet_s_ptq.yaml --save_dir outputs/picodet_s_ptq

Reads model_dir, the calibration images (TrainDataset) and the PTQ section of the config;
writes model.pdmodel, model.pdiparams (and infer_cfg.yml) to --save_dir, plus
ptq_report.json. With --eval it also measures FP32 and INT8 mAP on EvalDataset.
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
    parser.add_argument("--eval", action="store_true", help="also evaluate FP32 and INT8 mAP on EvalDataset")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    from ptqdet.config import PTQ_ALGOS, ConfigError, load_config
    from ptqdet.pipeline import quantize_and_report

    if args.algo is not None and args.algo not in PTQ_ALGOS:
        raise ConfigError(f"--algo {args.algo!r} is not one of {', '.join(PTQ_ALGOS)}")
    cfg = load_config(args.config_path)
    report = quantize_and_report(cfg, args.save_dir, device=args.devices, algo=args.algo, evaluate=args.eval,
                                 threads=args.threads, progress=not args.quiet)
    print(report.table)
    print(f"\nINT8 model: {args.save_dir}   report: {report.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
