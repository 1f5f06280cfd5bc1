"""Inference models on disk and Paddle Inference predictors for them."""
from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .config import ConfigError, PTQDetConfig

# load_static_model: imported from here by modules that load models (ptqdet.recovery)
from .paddle_static import QUANT_OP_PREFIXES, WEIGHT_SLOTS, load_static_model  # noqa: F401

LEGACY_NAMES = {"model.pdmodel": "__model__", "model.pdiparams": "__params__"}
# what Paddle's oneDNN passes turn those op types into before they quantize them
# NMS ops of PaddleDetection exports (a model without one needs ptqdet's NMS: arch PPYOLOE)
NMS_OP_TYPES = ("multiclass_nms3", "multiclass_nms2", "multiclass_nms", "matrix_nms")
# bytes per element of Paddle's VarType data types (framework.proto), as stored in .pdiparams
PARAM_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2}
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
    # shapes of the tensors stored in the params file, and of every variable the program feeds
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def feed_names(self) -> list[str]:
        return [n for op in self.ops if op.type == "feed" for n in op.outputs.get("Out", [])]

    @property
    def num_outputs(self) -> int:
        return sum(op.type == "fetch" for op in self.ops)

    @property
    def has_nms(self) -> bool:
        return any(op.type in NMS_OP_TYPES for op in self.ops)


def read_program(files: ModelFiles) -> ProgramInfo:
    """The ops and parameters of the model's main block, read from the program file
    (no executor, works in static and dynamic mode). ConfigError when it is not a program."""
    from paddle.base import core

    try:
        desc = core.ProgramDesc(files.model_path.read_bytes())
    except ValueError as exc:  # paddle's InvalidArgument: the protobuf does not parse
        raise ConfigError(f"model file is not a Paddle program (truncated or corrupt?): {files.model_path}") from exc
    block = desc.block(0)
    ops = []
    for i in range(block.op_size()):
        op = block.op(i)
        ops.append(OpInfo(op.type(), {n: list(op.input(n)) for n in op.input_names()},
                          {n: list(op.output(n)) for n in op.output_names()}))
    variables = [v for v in block.all_vars() if v.persistable()]
    params = {v.name(): tuple(v.shape()) for v in variables if v.type() == core.VarDesc.VarType.LOD_TENSOR}
    fed = [n for op in ops if op.type == "feed" for n in op.outputs.get("Out", [])]
    inputs = {n: tuple(block.var(n.encode()).shape()) for n in fed if block.has_var(n.encode())}
    return ProgramInfo(ops, frozenset(v.name() for v in variables), params, inputs)


def check_params(files: ModelFiles, program: ProgramInfo) -> None:
    """ConfigError unless the params file holds exactly the program's parameters (Paddle's
    combined format: each tensor, in name order, as a header, a TensorDesc and its data)."""
    from google.protobuf.message import DecodeError
    from paddle.base.proto import framework_pb2

    data = files.params_path.read_bytes()
    corrupt = ConfigError(f"params file is truncated or corrupt: {files.params_path}")
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if size < 0 or offset + size > len(data):
            raise corrupt
        offset += size
        return data[offset - size:offset]

    for name in sorted(program.params):
        take(4)  # version
        (lod_levels,) = struct.unpack("<Q", take(8))
        if lod_levels > 8:  # detector parameters have none; a large count is a corrupt header
            raise corrupt
        for _ in range(lod_levels):
            take(struct.unpack("<Q", take(8))[0])
        take(4)  # version
        desc = framework_pb2.VarType.TensorDesc()
        try:
            desc.ParseFromString(take(struct.unpack("<i", take(4))[0]))
        except DecodeError:
            raise corrupt from None
        shape = program.params[name]
        numel = int(np.prod(desc.dims, dtype=np.int64))
        if numel != int(np.prod(shape, dtype=np.int64)):  # scales: () in the params, (1,) in the program
            raise ConfigError(f"params file does not match the model ({name}: {tuple(desc.dims)} in the params, "
                              f"{shape} in the program): {files.params_path}")
        take(numel * PARAM_DTYPE_BYTES.get(desc.data_type, 4))
    if offset != len(data):
        raise corrupt


def check_model(files: ModelFiles, feed_names: list[str] | None = None, nms_outside: bool | None = None
                ) -> ProgramInfo:
    """Up-front checks of a detector export; ConfigError naming the file or key.
    feed_names: the model inputs the config feeds (input_list); nms_outside: the config's arch
    says the model has no NMS (PPYOLOE). Returns the program."""
    program = read_program(files)
    inputs = program.feed_names
    if not any(len(shape) == 4 for shape in program.input_shapes.values()) or program.num_outputs < 2:
        raise ConfigError(f"not a detector export (inputs {program.input_shapes}, {program.num_outputs} output(s); "
                          f"expected an image input [N, C, H, W] and box outputs): {files.model_path}")
    check_params(files, program)
    if feed_names is not None:
        unknown = [n for n in feed_names if n not in inputs]
        if unknown:
            raise ConfigError(f"input_list names {unknown}, which the model does not have (its inputs: {inputs}): "
                              f"{files.model_path}")
        unfed = [n for n in inputs if n not in feed_names]
        if unfed:
            raise ConfigError(f"input_list does not feed the model inputs {unfed}: {files.model_path}")
    if nms_outside is not None and nms_outside == program.has_nms:
        raise ConfigError(f"arch: the model {'has' if program.has_nms else 'has no'} NMS inside, so arch must "
                          f"{'not ' if program.has_nms else ''}be PPYOLOE: {files.model_path}")
    return program


def check_config_model(cfg: PTQDetConfig, files: ModelFiles) -> ProgramInfo:
    """check_model with what the config says about the model (input_list, arch)."""
    return check_model(files, list(cfg.feed_names.values()), cfg.nms_outside)


def holds_model(folder: Path) -> bool:
    """True when a folder holds a Paddle or ONNX model at its top level (an earlier output)."""
    return any(p.suffix in (".pdmodel", ".onnx") or p.name == LEGACY_NAMES["model.pdmodel"] for p in folder.iterdir())


def check_output_dir(path: Path, model_dir: Path | None, key: str = "save_dir", replaced: bool = True) -> None:
    """ConfigError unless `path` can be made an output folder that harms nothing: not model_dir,
    not inside it, creatable. replaced: the folder will be replaced whole (post_quant.py,
    export_onnx.py), so it must not hold model_dir nor be a non-empty folder without a model
    (an earlier output is replaced, anything else is refused rather than deleted)."""
    path = Path(path)
    resolved = path.resolve()
    if model_dir is not None:
        model = Path(model_dir).resolve()
        if resolved == model:
            raise ConfigError(f"{key} {path} is model_dir: the model would be overwritten; choose another folder")
        if model in resolved.parents:
            raise ConfigError(f"{key} {path} is inside model_dir {model_dir}; choose a folder outside it")
        if replaced and resolved in model.parents:
            raise ConfigError(f"{key} {path} holds model_dir {model_dir}: replacing it would delete the model")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a folder")
    if replaced and path.is_dir() and any(path.iterdir()) and not holds_model(path):
        example = sorted(p.name for p in path.iterdir())[0]
        raise ConfigError(f"{key} {path} holds files that are not a model (e.g. {example}) and would be replaced "
                          "whole; choose a new or empty folder, or an earlier output")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be created: {existing} is not writable")


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
