"""Inference models on disk and Paddle Inference predictors for them."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .config import ConfigError
# load_static_model: imported from here by modules that load models (ptqdet.recovery)
from .paddle_static import QUANT_OP_PREFIXES, WEIGHT_SLOTS, load_static_model  # noqa: F401

LEGACY_NAMES = {"model.pdmodel": "__model__", "model.pdiparams": "__params__"}
# what Paddle's oneDNN passes turn those op types into before they quantize them
ONEDNN_FUSED_TYPES = {"conv2d": ("fused_conv2d",), "depthwise_conv2d": ("fused_conv2d",),
                      "conv2d_transpose": ("conv2d_transpose_bias",), "mul": ("fc",),
                      "matmul": ("fused_matmul",), "matmul_v2": ("fused_matmul",)}


@dataclass(frozen=True)
class ModelFiles:
    model_dir: Path
    model_filename: str
    params_filename: str

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_filename

    @property
    def params_path(self) -> Path:
        return self.model_dir / self.params_filename


def resolve_model_files(model_dir: str | Path, model_filename: str | None = None,
                        params_filename: str | None = None) -> ModelFiles:
    """Find the model and params files; accept the old names __model__/__params__."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model_dir does not exist: {model_dir}")
    names = []
    for given, default in ((model_filename, "model.pdmodel"), (params_filename, "model.pdiparams")):
        name = given or default
        if not (model_dir / name).is_file() and name in LEGACY_NAMES and (model_dir / LEGACY_NAMES[name]).is_file():
            name = LEGACY_NAMES[name]
        if not (model_dir / name).is_file():
            raise ConfigError(f"model file not found: {model_dir / name}")
        names.append(name)
    return ModelFiles(model_dir, names[0], names[1])


@dataclass(frozen=True)
class OpInfo:
    type: str
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]


@dataclass(frozen=True)
class ProgramInfo:
    ops: list[OpInfo]
    persistables: frozenset[str]  # parameter names


def read_program(files: ModelFiles) -> ProgramInfo:
    """The ops and parameters of the model's main block, read from the program file
    (no executor, works in static and dynamic mode)."""
    from paddle.base import core

    desc = core.ProgramDesc(files.model_path.read_bytes())
    block = desc.block(0)
    ops = []
    for i in range(block.op_size()):
        op = block.op(i)
        ops.append(OpInfo(op.type(), {n: list(op.input(n)) for n in op.input_names()},
                          {n: list(op.output(n)) for n in op.output_names()}))
    persistables = frozenset(v.name() for v in block.all_vars() if v.persistable())
    return ProgramInfo(ops, persistables)


def read_ops(files: ModelFiles) -> list[OpInfo]:
    return read_program(files).ops


def is_quantized(files: ModelFiles, ops: list[OpInfo] | None = None) -> bool:
    """`ops`: the model's ops, if already read."""
    return any(op.type.startswith(QUANT_OP_PREFIXES) for op in (read_ops(files) if ops is None else ops))


def quantized_layer_types(files: ModelFiles, ops: list[OpInfo] | None = None) -> set[str]:
    """Op types of the layers the model was quantized for (conv2d, matmul_v2, ...): weight
    layers that read the output of a quant/dequant op. `ops`: the model's ops, if already read."""
    ops = read_ops(files) if ops is None else ops
    quantized = {n for op in ops if op.type.startswith(QUANT_OP_PREFIXES) for out in op.outputs.values() for n in out}
    return {op.type for op in ops
            if op.type in WEIGHT_SLOTS and any(n in quantized for names in op.inputs.values() for n in names)}


class Runner(Protocol):
    """What ptqdet.metrics.evaluate and measure_latency need: Predictor and every backend."""

    mode: str

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class PredictorOptions:
    device: str = "cpu"  # cpu | gpu
    threads: int = 2
    mkldnn: bool = True  # oneDNN kernels on CPU
    int8: bool | None = None  # oneDNN INT8 kernels; None = when the model is quantized
    gpu_mem_mb: int = 500
    # oneDNN INT8: keep these op types off oneDNN. Paddle 2.6's oneDNN runs them on an INT8
    # NHWC layout with reference kernels (PP-YOLOE-s: softmax ~60 ms, reduce_mean ~25 ms per
    # image); on plain kernels the outputs are bit-identical and INT8 is 2.4x faster.
    # An empty tuple gives oneDNN every op (Paddle's default).
    int8_slow_ops: tuple[str, ...] = ("softmax", "reduce_mean")
    # oneDNN INT8: the op types that run on INT8 kernels. None = the layer types the model
    # was quantized for (quantized_layer_types). Paddle's default (an empty tuple here) also
    # runs concat, elementwise, pool and interpolation ops in INT8 with scales it propagates
    # itself, which the quantized model never had: FastEval mAP of the demo PP-YOLOE-s INT8
    # 22.4 that way, 32.0 with convolutions only (32.1 simulated), and no slower.
    int8_ops: tuple[str, ...] | None = None
    # GPU only: TensorRT engine precision (None = plain CUDA kernels): "fp32", "fp16" or "int8"
    # (INT8 reads the scales of a quantized model). Documented for GPU users, not measured here.
    tensorrt: str | None = None


class Predictor:
    """A Paddle Inference predictor fed with numpy dicts."""

    def __init__(self, files: ModelFiles, options: PredictorOptions | None = None):
        self.files = files
        self.options = options or PredictorOptions()
        self.quantized = is_quantized(files)
        self.threads = self.options.threads
        want_int8 = self.quantized if self.options.int8 is None else self.options.int8
        use_int8 = want_int8 and self.options.device == "cpu" and self.options.mkldnn
        try:
            self._predictor = self._create(use_int8)
        except Exception as exc:  # noqa: BLE001 - paddle raises SystemError/RuntimeError alike
            if not use_int8 or "threshold" not in str(exc):
                raise
            # oneDNN INT8 needs a scale on every input of every op it fuses (e.g. PicoDet's
            # matmul_v2); without them, run the fake-quant graph on FP32 kernels instead.
            self._predictor = self._create(False)
            use_int8 = False
        if self.options.device == "gpu":
            self.mode = f"GPU TensorRT {self.options.tensorrt.upper()}" if self.options.tensorrt else "GPU"
        elif use_int8:
            self.mode = "oneDNN INT8"
        elif self.quantized:
            self.mode = "simulated INT8 (fake-quant on FP32 kernels)"
        else:
            self.mode = "oneDNN FP32" if self.options.mkldnn else "FP32"
        self.input_names: list[str] = list(self._predictor.get_input_names())
        self.output_names: list[str] = list(self._predictor.get_output_names())

    def _create(self, int8: bool):
        import paddle.inference as paddle_infer

        config = paddle_infer.Config(str(self.files.model_path), str(self.files.params_path))
        if self.options.device == "gpu":
            config.enable_use_gpu(self.options.gpu_mem_mb, 0)
            if self.options.tensorrt:
                self._enable_tensorrt(config, paddle_infer)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(self.options.threads)
            if self.options.mkldnn:
                config.enable_mkldnn()
                if int8:
                    ops = read_ops(self.files)
                    slow = set(self.options.int8_slow_ops)
                    if slow:
                        config.set_mkldnn_op({op.type for op in ops} - slow)
                    config.enable_mkldnn_int8(self.int8_op_types(ops))
        config.switch_ir_optim(True)
        config.enable_memory_optim()
        config.disable_glog_info()
        return paddle_infer.create_predictor(config)

    def int8_op_types(self, ops: list[OpInfo] | None = None) -> set[str]:
        """What enable_mkldnn_int8 quantizes (an empty set: Paddle's default, every op it can)."""
        if self.options.int8_ops is not None:
            base = set(self.options.int8_ops)
        else:
            base = quantized_layer_types(self.files, ops)
        return base | {fused for t in base for fused in ONEDNN_FUSED_TYPES.get(t, ())}

    def _enable_tensorrt(self, config, paddle_infer) -> None:
        precisions = {"fp32": paddle_infer.PrecisionType.Float32, "fp16": paddle_infer.PrecisionType.Half,
                      "int8": paddle_infer.PrecisionType.Int8}
        if self.options.tensorrt not in precisions:
            raise ConfigError(f"tensorrt precision {self.options.tensorrt!r} is not one of {sorted(precisions)}")
        # use_calib_mode=False: an INT8 model from ptqdet carries its scales, no TensorRT calibration
        config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=1, min_subgraph_size=3,
                                      precision_mode=precisions[self.options.tensorrt],
                                      use_static=False, use_calib_mode=False)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name in self.input_names:
            if name not in feed:
                raise ConfigError(f"model input {name!r} is not fed; add it to input_list "
                                  f"(fed: {sorted(feed)})")
            self._predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feed[name]))
        self._predictor.run()
        return [self._predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names]


def measure_latency(predictor: Runner, feed: dict[str, np.ndarray], warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Median and spread (ms) of predictor.run on one feed."""
    for _ in range(warmup):
        predictor.run(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.run(feed)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(len(times) * 9) // 10], "repeats": repeats, "threads": getattr(predictor, "threads", None)}


def default_threads() -> int:
    return int(os.environ.get("PTQDET_THREADS", min(os.cpu_count() or 1, 4)))
