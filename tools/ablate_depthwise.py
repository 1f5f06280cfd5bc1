"""Which part of INT8 depthwise convolutions costs a model its accuracy: their weights or their inputs.

    python tools/ablate_depthwise.py --config_path configs/demo/picodet_s_ptq_deploy.yaml

Quantizes the config's FP32 model with its PTQ section and every depthwise convolution
quantized (the config's skip_op_types, skip_tensor_list and PTQ.equalize_depthwise are ignored), exports it to ONNX
(ptqdet's QDQ) and evaluates on --dataset:
  - FP32 (Paddle);
  - FP32 with only the depthwise weights rounded to 8 bits, one step per output channel, as
    PTQ's channel_wise_abs_max does (Paddle);
  - INT8, depthwise convolutions quantized (ONNX Runtime);
  - the same INT8 ONNX model with the QuantizeLinear/DequantizeLinear pair on each depthwise
    convolution's input removed: weights still INT8, inputs float (ONNX Runtime).
Writes <out>.md and <out>.json; the models go to --work_dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptqdet import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True,
                        help="ptqdet config (model_dir, PTQ section with onnx_format True)")
    parser.add_argument("--dataset", default="EvalDataset", choices=("EvalDataset", "FastEvalDataset"),
                        help="dataset of the mAP column (default EvalDataset)")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/ablate_depthwise"),
                        help="models made here, one folder per variant (default outputs/ablate_depthwise)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report path without suffix (default <work_dir>/ablation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cli.quiet_libraries()
    from ptqdet.ablation import float_depthwise_inputs, round_depthwise_weights
    from ptqdet.backends import BackendOptions, open_backend
    from ptqdet.config import ConfigError, load_config
    from ptqdet.export import export_onnx
    from ptqdet.files import resolve_model_files
    from ptqdet.metrics import evaluate
    from ptqdet.quantize import layer_weights, quantize
    from ptqdet.report import atomic_write_text, machine_info, mAP_points, markdown_table, write_json

    cfg = load_config(args.config_path)
    if not cfg.ptq.onnx_format:
        raise ConfigError(f"{cfg.path}: PTQ.onnx_format must be True (the ONNX export needs a QDQ model)")
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    if not layer_weights(fp32, ["depthwise_conv2d"]):
        raise ConfigError(f"{fp32.model_dir}: the model has no depthwise_conv2d layer")
    work, progress = args.work_dir, not args.quiet
    # plain PTQ: every depthwise convolution quantized, their inputs not equalized (PTQ.equalize_depthwise off)
    all_dw = dataclasses.replace(cfg, skip_op_types=[], skip_tensor_list=[],
                                 ptq=dataclasses.replace(cfg.ptq, equalize_depthwise=False))
    quantize(all_dw, work / "int8", progress=progress)
    export_onnx(resolve_model_files(work / "int8"), work / "onnx_int8")
    n_inputs = float_depthwise_inputs(work / "onnx_int8", work / "onnx_int8_dw_inputs_float")
    (work / "fp32_dw_weights_8bit").mkdir(parents=True, exist_ok=True)
    n_weights = round_depthwise_weights(fp32, work / "fp32_dw_weights_8bit")

    options = BackendOptions()
    variants = [("FP32", "paddle", fp32.model_dir),
                (f"FP32, {n_weights} depthwise weights rounded to 8 bits per channel", "paddle",
                 work / "fp32_dw_weights_8bit"),
                ("INT8, depthwise convolutions quantized", "onnxruntime", work / "onnx_int8"),
                (f"INT8, {n_inputs} depthwise inputs float (weights INT8)", "onnxruntime",
                 work / "onnx_int8_dw_inputs_float")]
    rows = []
    for name, backend, model in variants:
        result = evaluate(open_backend(backend, model, options), cfg, args.dataset, progress=progress, desc=name)
        rows.append({"variant": name, "backend": backend, "model": str(model), "map": result.map})
        print(f"{name}: {mAP_points(result.map):.1f}", flush=True)
    table = markdown_table(["variant", "backend", f"mAP ({args.dataset})"],
                           [[r["variant"], r["backend"], f"{mAP_points(r['map']):.1f}"] for r in rows])
    machine = machine_info()
    out = args.out or work / "ablation"
    atomic_write_text(out.with_suffix(".md"), f"Depthwise ablation of {cfg.path}, {machine['date']}, {machine['cpu']}\n"
                      f"Command: python tools/ablate_depthwise.py "
                      f"{' '.join(argv if argv is not None else sys.argv[1:])}"
                      f"\n\n{table}\n")
    write_json(out.with_suffix(".json"), {"machine": machine, "config": str(cfg.path), "rows": rows})
    print(f"\n{table}\n\nreport: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
