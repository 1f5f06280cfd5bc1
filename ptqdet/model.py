"""Paddle Inference predictors, the options every runtime takes, and latency runs."""
from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import ConfigError
from .files import ModelFiles
from .program import OpInfo, is_quantized, quantized_layer_types, read_ops

# what Paddle's oneDNN passes turn those op types into before they quantize them
ONEDNN_FUSED_TYPES = {"conv2d": ("fused_conv2d",), "depthwise_conv2d": ("fused_conv2d",),
                      "conv2d_transpose": ("conv2d_transpose_bias",), "mul": ("fc",),
                      "matmul": ("fused_matmul",), "matmul_v2": ("fused_matmul",)}


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to the process's stderr (fd 2) to /dev/null meanwhile:
    Paddle's C++ IR passes log there past glog's levels and disable_glog_info (oneDNN INT8:
    "---    quantized 98 fused_conv2d ops", 30 lines). Errors still arrive as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C stdio still buffers goes to /dev/null too
        os.dup2(saved, 2)
        os.close(saved)


class Runner(Protocol):
    """What ptqdet.metrics.evaluate and measure_latency need: Predictor and every backend."""

    mode: str

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class BackendOptions:
    """How every runtime runs a model (ptqdet.backends.open_backend builds the runner)."""

    device: str = "cpu"  # cpu | gpu (gpu: paddle backend only)
    threads: int | None = None  # None: default_threads()
    mkldnn: bool = True  # paddle on CPU: oneDNN kernels
    int8: bool | None = None  # paddle: oneDNN INT8 kernels; None = when the model is quantized
    gpu_mem_mb: int = 500
    # paddle, oneDNN INT8: keep these op types off oneDNN. Paddle 2.6's oneDNN runs them on an
    # INT8 NHWC layout with slow reference kernels; on plain kernels the outputs are
    # bit-identical and the model runs faster. An empty tuple gives oneDNN every op.
    int8_slow_ops: tuple[str, ...] = ("softmax", "reduce_mean")
    # paddle, oneDNN INT8: the op types that run on INT8 kernels. None = the layer types the
    # model was quantized for (quantized_layer_types). Paddle's default (an empty tuple here)
    # also runs concat, elementwise, pool and interpolation ops in INT8 with scales it
    # propagates itself, which the quantized model never had, and loses mAP that way.
    int8_ops: tuple[str, ...] | None = None
    # paddle on GPU: TensorRT engine precision (None = plain CUDA kernels): "fp32", "fp16" or
    # "int8" (INT8 reads the scales of a quantized model). Documented for GPU users.
    tensorrt: str | None = None
    openvino_precision: str = "f32"  # openvino: INFERENCE_PRECISION_HINT, f32 or bf16
    openvino_nms: bool = True  # openvino, export cut before NMS: NMS inside the compiled model (else after it)

    def resolved_threads(self) -> int:
        return self.threads or default_threads()


class Predictor:
    """A Paddle Inference predictor fed with numpy dicts (built by ptqdet.backends.open_backend)."""

    backend = "paddle"

    def __init__(self, files: ModelFiles, options: BackendOptions):
        self.files = files
        self.options = options
        self.quantized = is_quantized(files)
        self.threads = options.resolved_threads()
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
            config.set_cpu_math_library_num_threads(self.threads)
            if self.options.mkldnn:
                config.enable_mkldnn()
                if int8:
                    ops = read_ops(self.files)
                    slow = set(self.options.int8_slow_ops)
                    if slow:
                        config.set_mkldnn_op({op.type for op in ops} - slow)
                    config.enable_mkldnn_int8(self.int8_op_types(ops))
        config.switch_ir_optim(True)
        # the pass folds a `scale` after a matmul into the matmul's weight, once per match: a weight
        # several matmuls share (GFL's distribution projection, one per FPN level) is rescaled once
        # per level and every box comes out wrong (measured: FP32 mAP 0 on a trained GFL); without
        # it, models whose matmuls share no weight compute bit for bit the same
        config.delete_pass("matmul_v2_scale_fuse_pass")
        config.enable_memory_optim()
        config.disable_glog_info()
        with native_stderr_silenced():
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


def measure_latency(predictor: Runner, feed: dict[str, np.ndarray], warmup: int = 5,
                    repeats: int = 30) -> dict[str, float]:
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
