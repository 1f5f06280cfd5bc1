"""Accuracy recovery applied to the FP32 model before PTQ calibrates it.

Depthwise input equalization (`PTQ.equalize_depthwise`): a depthwise convolution's output
channel c reads only its input channel c, so scaling that input channel by 1/s_c and the
channel's filter by s_c computes the same function. With s_c set from each channel's range
on the calibration images, every input channel of the depthwise convolution spans the same
range, and the one per-tensor step that INT8 gives its input fits every channel: in effect a
per-channel input scale, which INT8 runtimes do not offer for activations. The 1/s_c factors
become one `elementwise_mul` (per-channel constant) in front of each depthwise convolution,
an op every runtime runs (and OpenVINO fuses into the preceding convolution); the s_c
factors go into the filters, whose per-channel weight quantization does not see them.
The transformed model is still an FP32 model with the same outputs (up to float rounding).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import ModelFiles

EQUALIZED_SUFFIX = ".dw_eq"


@dataclass
class EqualizationResult:
    """What equalize_depthwise_inputs did: the layers it changed and how uneven their inputs were."""

    layers: list[str] = field(default_factory=list)  # depthwise filter names, program order
    spread: dict[str, float] = field(default_factory=dict)  # max/median channel range, per layer
    input_max: dict[str, float] = field(default_factory=dict)  # equalized input variable -> its max |x|


def channel_ranges(executor, program, feeds: Iterable[dict[str, np.ndarray]],
                   names: list[str]) -> dict[str, np.ndarray]:
    """Max |x| per channel (axis 1) of each named variable over the fed batches (the program
    run in the current scope)."""
    import paddle

    from .calibration import collect_statistics

    feeds = list(feeds)
    feed_names = list(feeds[0]) if feeds else []
    return collect_statistics(program, paddle.static.global_scope(), executor.place, feed_names, feeds,
                              channel_vars=names).channel_max


def channel_spread(ranges: np.ndarray) -> float:
    """How uneven a tensor's channels are: largest channel range / median of the nonzero ones."""
    positive = ranges[ranges > 0]
    return float(ranges.max() / np.median(positive)) if positive.size else 1.0


def equalization_scales(ranges: np.ndarray, strength: float = 1.0, floor: float = 1e-3) -> np.ndarray:
    """s_c = (r_c / max r)^strength, with dead channels (r_c below floor x max) held at the floor:
    dividing input channel c by s_c brings every channel's range to max r (strength 1)."""
    top = float(ranges.max()) if ranges.size else 0.0
    if top <= 0:
        return np.ones_like(ranges, dtype=np.float32)
    ratio = np.maximum(ranges / top, floor)
    return np.power(ratio, strength).astype(np.float32)


def _strengths(strength: float, conv_strength: float) -> dict[str, float]:
    """The equalization strength per convolution type."""
    return {"depthwise_conv2d": strength, "conv2d": conv_strength}


def equalization_targets(block, strength: float = 1.0, skip: Iterable[str] = (),
                         conv_strength: float = 0.0) -> list:
    """The convolutions whose inputs equalization changes: every depthwise one (strength > 0)
    and, with conv_strength > 0, every ordinary one (groups 1), but those whose filter is in skip."""
    skip = set(skip)
    strengths = _strengths(strength, conv_strength)
    return [op for op in block.ops
            if strengths.get(op.type, 0) > 0 and op.input("Filter")[0] not in skip
            and (op.type == "depthwise_conv2d" or op.attr("groups") == 1)]


def equalize_program(model, ranges: dict[str, np.ndarray], strength: float = 1.0, skip: Iterable[str] = (),
                     conv_strength: float = 0.0, min_spread: float = 1.0) -> EqualizationResult:
    """Equalize a loaded model (ptqdet.paddle_static.LoadedProgram) in place, from the per-channel
    ranges of its convolution inputs (ranges[input name], e.g. channel_ranges on the calibration
    batches); see equalize_depthwise_inputs."""
    block = model.program.global_block()
    strengths = _strengths(strength, conv_strength)
    targets = [op for op in equalization_targets(block, strength, skip, conv_strength)
               if op.type != "depthwise_conv2d" or channel_spread(ranges[op.input("Input")[0]]) >= min_spread]
    result = EqualizationResult()
    for op in targets:
        _equalize_one(block, model.scope, model.place, op, ranges[op.input("Input")[0]], strengths[op.type], result)
    return result


def equalize_depthwise_inputs(files: ModelFiles, out_dir: Path, feeds: list[dict[str, np.ndarray]],
                              strength: float = 1.0, skip: Iterable[str] = (), conv_strength: float = 0.0,
                              min_spread: float = 1.0) -> EqualizationResult:
    """Write files' model to out_dir (model.pdmodel/.pdiparams) with each depthwise convolution's
    input channels equalized on `feeds` (calibration batches); layers whose filter is in `skip`
    stay as they are. conv_strength > 0: also the inputs of ordinary (groups 1) convolutions,
    whose filters take s_c on input channel c, at that strength (their per-output-channel weight
    steps do see it: a partial migration, as SmoothQuant's). Depthwise layers whose input channels
    spread less than min_spread (channel_spread) stay as they are. Returns the equalized layers."""
    from .paddle_static import loaded_program

    with loaded_program(files) as model:
        targets = equalization_targets(model.program.global_block(), strength, skip, conv_strength)
        inputs = list(dict.fromkeys(op.input("Input")[0] for op in targets))
        feeds = [{k: v for k, v in f.items() if k in model.feed_names} for f in feeds]
        ranges = channel_ranges(model.exe, model.program, feeds, inputs)
        result = equalize_program(model, ranges, strength, skip, conv_strength, min_spread)
        save_equalized(model, out_dir, files)
    return result


def save_equalized(model, out_dir: Path, files: ModelFiles) -> None:
    """Save a loaded model that equalize_program changed (its own outputs fetched, see
    _fetch_targets), with the infer_cfg.yml of the model it was loaded from (files), if any."""
    model.save(Path(out_dir), _fetch_targets(model.program.global_block(), model.fetch_vars))
    info = files.model_dir / "infer_cfg.yml"
    if info.is_file():
        shutil.copy2(info, Path(out_dir) / "infer_cfg.yml")


def _fetch_targets(block, fetches: list) -> list:
    """The variables save_inference_model should fetch: a loaded inference program's fetch
    variables are the outputs of the scale(1.0) ops an earlier save appended
    (save_infer_model/scale_<i>); saving those again appends in-place scale ops that write the
    same names a second time. Their inputs, the model's own outputs, are fetched instead (the
    save names the new scale outputs as before)."""
    producers = {op.output_arg_names[0]: op for op in block.ops
                 if op.type == "scale" and len(op.output_arg_names) == 1}
    targets = []
    for var in fetches:
        op = producers.get(var.name)
        if (op is not None and var.name.startswith("save_infer_model/") and op.attr("scale") == 1.0
                and op.attr("bias") == 0.0):
            var = block.var(op.input("X")[0])
        targets.append(var)
    return targets


def _equalize_one(block, scope, place, op, ranges: np.ndarray, strength: float, result: EqualizationResult) -> None:
    """Insert x * (1/s) before one depthwise op and fold s into its filter."""
    x_name, w_name = op.input("Input")[0], op.input("Filter")[0]
    scales = equalization_scales(ranges, strength)
    weight = scope.find_var(w_name).get_tensor()
    w = np.array(weight)
    if op.type == "depthwise_conv2d":  # filter [C*m, 1, kh, kw]: output channel o reads input channel o // m
        w = w * np.repeat(scales, w.shape[0] // scales.shape[0]).reshape(-1, 1, 1, 1)
    else:  # filter [O, C, kh, kw]: input channel c
        w = w * scales.reshape(1, -1, 1, 1)
    weight.set(w.astype(np.float32), place)

    inv_name = f"{w_name}{EQUALIZED_SUFFIX}.inv_scale"
    block.create_var(name=inv_name, shape=list(scales.shape), dtype="float32", persistable=True)
    scope.var(inv_name).get_tensor().set((1.0 / scales).astype(np.float32), place)
    x_var = block.var(x_name)
    # one output per consumer: layers that read one input (PicoDet's head branches) each get their
    # own multiply, so no variable is written twice (paddleslim's region builder needs every
    # variable to have one producer, ahead of its readers)
    out_name = f"{w_name}{EQUALIZED_SUFFIX}.input"
    block.create_var(name=out_name, shape=x_var.shape, dtype=x_var.dtype)
    index = block.ops.index(op)
    block._insert_op(index, type="elementwise_mul", inputs={"X": [x_name], "Y": [inv_name]},
                     outputs={"Out": [out_name]}, attrs={"axis": 1})
    op._rename_input(x_name, out_name)
    result.input_max[out_name] = float((ranges / scales).max())
    result.layers.append(w_name)
    result.spread[w_name] = channel_spread(ranges)


# the ops that quantize an activation, and the input that holds its clip value (max |x|)
ACTIVATION_QUANT_SCALES = {"quantize_linear": "Scale", "fake_quantize_moving_average_abs_max": "InScale",
                           "fake_quantize_range_abs_max": "InScale", "fake_quantize_abs_max": None}


def set_activation_maxima(files: ModelFiles, maxima: dict[str, float]) -> list[str]:
    """In a quantized model, make the activation step of each variable in `maxima` its max |x|
    (no clipping), and save the model in place. Returns the variables changed.

    Equalized depthwise inputs have every channel at (nearly) the same maximum: a clipping
    calibration (avg, KL, hist) would cut the peaks of every channel, where it cuts a few
    outliers elsewhere. Their maxima are known exactly from the equalization."""
    from .paddle_static import loaded_program

    changed = []
    with loaded_program(files) as model:
        for op in model.program.global_block().ops:
            slot = ACTIVATION_QUANT_SCALES.get(op.type)
            if not slot or op.input("X")[0] not in maxima or op.input("X")[0] in changed:
                continue
            tensor = model.scope.find_var(op.input(slot)[0]).get_tensor()
            tensor.set(np.full(np.array(tensor).shape, maxima[op.input("X")[0]], dtype=np.float32), model.place)
            changed.append(op.input("X")[0])
        model.save(files.model_dir, _fetch_targets(model.program.global_block(), model.fetch_vars))
    return changed
