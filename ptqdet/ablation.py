"""Model edits of the depthwise ablation (tools/ablate_depthwise.py): which half of an INT8
depthwise convolution costs the accuracy, its weights or its input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .files import ModelFiles
from .paddle_static import loaded_program


def round_channels(w: np.ndarray, bits: int = 8) -> np.ndarray:
    """w rounded to `bits` bits with one step per output channel (axis 0), as PTQ's
    channel_wise_abs_max does; an all-zero channel stays zero."""
    qmax = 2 ** (bits - 1) - 1
    step = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / qmax
    step = np.where(step > 0, step, 1.0).reshape(-1, *([1] * (w.ndim - 1)))
    return (np.clip(np.round(w / step), -qmax, qmax) * step).astype(np.float32)


def round_depthwise_weights(files: ModelFiles, out_dir: Path, bits: int = 8) -> int:
    """Save files' model to out_dir with every depthwise_conv2d weight rounded per output
    channel (round_channels); returns how many layers were rounded."""
    count = 0
    with loaded_program(files) as loaded:
        for op in loaded.program.global_block().ops:
            if op.type != "depthwise_conv2d":
                continue
            tensor = loaded.scope.find_var(op.input("Filter")[0]).get_tensor()
            tensor.set(round_channels(np.array(tensor), bits), loaded.place)
            count += 1
        loaded.save(out_dir)
    shutil.copy2(files.model_dir / "infer_cfg.yml", Path(out_dir) / "infer_cfg.yml")
    return count


def float_depthwise_inputs(export_dir: Path, out_dir: Path) -> int:
    """Copy an ONNX export with each depthwise Conv (group > 1) reading the input of its
    activation QuantizeLinear instead of the DequantizeLinear output; returns the count."""
    import onnx

    model = onnx.load(str(Path(export_dir) / "model.onnx"))
    producer = {out: node for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type != "Conv" or group == 1:
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            count += 1
    shutil.copytree(export_dir, out_dir, dirs_exist_ok=True)
    onnx.save(model, str(Path(out_dir) / "model.onnx"))
    return count
