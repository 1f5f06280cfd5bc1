"""Evaluate an inference model (FP32 or INT8) on the config's EvalDataset: mAP, and latency.

    python eval.py --config_path configs/demo/picodet_s_ptq.yaml
    python eval.py --config_path configs/demo/picodet_s_ptq.yaml --model_dir outputs/picodet_s_ptq --benchmark
    python eval.py --config_path configs/demo/ppyoloe_s_ptq.yaml --backend openvino   # exports to ONNX first
    python eval.py --config_path configs/demo/ppyoloe_s_ptq.yaml --backend onnxruntime --model_dir outputs/onnx/ppyoloe

Backends: paddle (Paddle Inference; CPU oneDNN FP32/INT8, GPU with --tensorrt), openvino and
onnxruntime (CPU, on a ptqdet ONNX export from export_onnx.py, or on a Paddle model folder,
which is then exported to a temporary folder first). Pre- and post-processing are the same
for every backend.

Prints a table and writes a JSON report (default: outputs/eval/<model folder name>.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqdet import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common_flags(parser)
    parser.add_argument("--model_dir", type=Path, default=None,
                        help="model to evaluate: a Paddle model folder, or an ONNX export folder of export_onnx.py "
                             "(ONNX backends) (default: the config's model_dir)")
    parser.add_argument("--dataset", default="EvalDataset", choices=("EvalDataset", "FastEvalDataset"),
                        help="which dataset of the config to evaluate on (default EvalDataset)")
    parser.add_argument("--benchmark", action="store_true",
                        help="also measure latency (batch 1, median of --repeats runs after warm-up)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs for --benchmark (default 30)")
    parser.add_argument("--no_mkldnn", action="store_true",
                        help="CPU: plain kernels instead of oneDNN (INT8 models then run simulated fake-quant)")
    parser.add_argument("--backend", default="paddle", choices=("paddle", "openvino", "onnxruntime"),
                        help="inference runtime (default paddle = Paddle Inference)")
    parser.add_argument("--openvino_precision", default="f32", choices=("f32", "bf16"),
                        help="openvino: inference precision of the float ops (default f32; OpenVINO's own default "
                             "on CPUs with bf16 is bf16, which changes results)")
    parser.add_argument("--tensorrt", default=None, choices=("fp32", "fp16", "int8"),
                        help="paddle on --devices gpu: run through TensorRT at this precision "
                             "(int8 needs an INT8 model)")
    parser.add_argument("--output", type=Path, default=None, help="JSON report path")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    from ptqdet.config import ConfigError, load_config
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_and_report

    if args.tensorrt and (args.devices != "gpu" or args.backend != "paddle"):
        raise ConfigError("--tensorrt needs --devices gpu and --backend paddle")
    cfg = load_config(args.config_path)
    options = BackendOptions(device=args.devices, threads=args.threads, mkldnn=not args.no_mkldnn,
                             openvino_precision=args.openvino_precision, tensorrt=args.tensorrt)
    request = EvalRequest(args.model_dir or cfg.model_dir, args.backend, options, args.dataset,
                          benchmark=args.benchmark, repeats=args.repeats, progress=not args.quiet)
    report = evaluate_and_report(cfg, request, args.output)
    print(report.table)
    print(f"\nreport: {report.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
