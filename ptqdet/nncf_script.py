"""OpenVINO's own PTQ (NNCF) of a ptqdet FP32 ONNX export, for the recovery benchmark's peer rows.

    .venv-nncf/bin/python ptqdet/nncf_script.py MODEL.onnx CALIB.npz OUT.xml --preset performance

Runs in its own venv (`make nncf-venv`: NNCF needs numpy 2, Paddle 2.6 numpy < 1.24), so it
imports neither ptqdet nor Paddle. CALIB.npz holds one array per model input, the calibration
images stacked on the batch axis (ptqdet.peers writes it from the config's TrainDataset, the
images ptqdet's own PTQ calibrates on); each image is fed alone (batch 1), as the model is
reshaped to. Default NNCF settings otherwise: what a user of NNCF gets from `nncf.quantize`.
Writes OUT.xml/.bin (f32 weights) and prints one JSON line: seconds, NNCF and OpenVINO versions.
"""
from __future__ import annotations

import argparse
import json
import time

import nncf
import numpy as np
import openvino as ov

PRESETS = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", help="FP32 ONNX model (a ptqdet export's model.onnx)")
    parser.add_argument("calibration", help="npz: one array per model input, images on axis 0")
    parser.add_argument("out", help="output IR path (.xml)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="performance",
                        help="NNCF preset: performance (symmetric activations) or mixed (asymmetric)")
    args = parser.parse_args()
    data = np.load(args.calibration)
    names = list(data.files)
    count = len(data[names[0]])
    model = ov.Core().read_model(args.onnx)
    model.reshape({name: [1, *data[name].shape[1:]] for name in names})
    items = [{name: data[name][i:i + 1] for name in names} for i in range(count)]
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(items), preset=PRESETS[args.preset], subset_size=count)
    seconds = time.perf_counter() - start
    ov.save_model(quantized, args.out, compress_to_fp16=False)
    print(json.dumps({"seconds": seconds, "nncf": nncf.__version__, "openvino": ov.__version__.split("-")[0],
                      "preset": args.preset, "images": count}))


if __name__ == "__main__":
    main()
