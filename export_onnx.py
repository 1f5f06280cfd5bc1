"""Export Paddle inference models (FP32 or INT8) to ONNX through paddle2onnx.

    python export_onnx.py --model_dir demo/models/ppyoloe_s_shapes --save_dir outputs/onnx/ppyoloe_s_fp32
    python export_onnx.py --model_dir outputs/ppyoloe_s_ptq_deploy --save_dir outputs/onnx/ppyoloe_s_int8

Writes --save_dir/model.onnx (checked with onnx.checker) and export.json. A model exported
with NMS inside (PicoDet) is cut before its NMS: the ONNX graph ends at the pre-NMS boxes
and scores, and export.json keeps the NMS settings, which ptqdet's backends apply (OpenVINO
inside the compiled model, ONNX Runtime after it: eval.py --backend openvino|onnxruntime
--model_dir <save_dir>). INT8 models must be in QDQ format (PTQ.onnx_format: True, as in
configs/demo/*_ptq_deploy.yaml); by default their ONNX QDQ nodes are written by ptqdet from
the model's int8 weights and scales, on the input and weights of each quantized layer, so the
ONNX model computes what Paddle Inference runs in INT8 (--qdq paddle2onnx: paddle2onnx's own
conversion, which quantizes more).
Exit code 1 with paddle2onnx's own error when the converter cannot handle the model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqdet import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, type=Path, help="Paddle inference model folder (FP32 or INT8)")
    parser.add_argument("--model_filename", default=None, help="model file inside model_dir (default model.pdmodel)")
    parser.add_argument("--params_filename", default=None,
                        help="params file inside model_dir (default model.pdiparams)")
    parser.add_argument("--save_dir", required=True, type=Path, help="output folder (model.onnx, export.json)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset to ask paddle2onnx for (default 13; "
                                                              "it raises it when an op needs a newer one)")
    parser.add_argument("--qdq", choices=("ptqdet", "paddle2onnx"), default="ptqdet",
                        help="INT8 models: who writes the ONNX QDQ nodes. ptqdet (default): QDQ on the quantized "
                             "layers only, as Paddle Inference runs them; paddle2onnx: its conversion of every "
                             "quantize/dequantize op of the model (for comparison)")
    parser.add_argument("--quiet", action="store_true",
                        help="no output from Paddle's or paddleslim's loggers and no warnings (README: every script)")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    from ptqdet.export import check_onnx, export_onnx
    from ptqdet.files import resolve_model_files
    from ptqdet.program import check_model

    files = resolve_model_files(args.model_dir, args.model_filename, args.params_filename)
    check_model(files)
    export = export_onnx(files, args.save_dir, opset=args.opset, qdq=args.qdq)  # errors: one line (cli.run)
    check_onnx(export.onnx_path)
    nms = (f"cut before NMS (ptqdet's backends apply it: OpenVINO in the compiled model, ONNX Runtime after it): "
           f"{export.nms}" if export.nms else "model outputs as exported")
    qdq = (f", QDQ by {export.qdq}" + (f" on {export.quantized_layers} layers" if export.quantized_layers else "")
           if export.qdq else "")
    print(f"{export.precision} ONNX model (opset {export.opset}, paddle2onnx {export.paddle2onnx}{qdq}, "
          f"onnx.checker ok): {export.onnx_path}\n{nms}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
