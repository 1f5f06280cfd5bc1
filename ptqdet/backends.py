"""Inference backends behind one interface: `run(feed) -> outputs`, as ptqdet.model.Predictor.

- `paddle`: Paddle Inference (ptqdet.model.Predictor): CPU oneDNN FP32/INT8 (tuned: see
  BackendOptions.int8_ops and int8_slow_ops), GPU with optional TensorRT FP32/FP16/INT8.
- `openvino`: OpenVINO on the paddle2onnx export (ptqdet.export). Inference precision is
  pinned (default f32; OpenVINO's own default on CPUs with bf16 support is bf16).
- `onnxruntime`: ONNX Runtime (CPU execution provider) on the same export.

Every backend returns what the Paddle model returns, so ptqdet.postprocess and
ptqdet.metrics.evaluate work unchanged: when the export was cut before the model's NMS,
the backend applies that NMS with the cut op's settings. OpenVINO runs it inside the compiled
model (its MulticlassNms-9 op has multiclass_nms3's semantics: same detections, row for row,
tested); ONNX Runtime runs the model, then PaddleDetection's op (ptqdet.postprocess).
"""
from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, NMSSettings
from .export import OnnxExport, export_onnx, is_onnx_export, load_export
from .files import ModelFiles, resolve_model_files
from .model import BackendOptions, Predictor
from .postprocess import multiclass_nms

BACKENDS = ("paddle", "openvino", "onnxruntime")
OPENVINO_PRECISIONS = ("f32", "bf16")
# the versions verified with paddle 2.6.2, numpy 1.23 and protobuf 3.20.3 (requirements.txt)
PIP_HINTS = {"openvino": "openvino==2026.4.1", "onnxruntime": "onnxruntime==1.19.2", "onnx": "onnx==1.16.2",
             "paddle2onnx": "paddle2onnx==1.3.1"}


class BackendUnavailable(ConfigError):
    """The Python package a backend needs is not installed."""


def require(module: str, backend: str) -> Any:
    """Import a backend's package or raise BackendUnavailable naming it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {backend!r} needs the Python package {module!r}, which is not installed "
                                 f"(pip install {PIP_HINTS.get(module, module)})") from exc


class OnnxRunner:
    """Common part of the ONNX backends: feed selection and NMS after the model."""

    backend = "onnx"

    def __init__(self, export: OnnxExport, options: BackendOptions):
        self.export = export
        self.options = options
        self.threads = options.resolved_threads()
        self.quantized = export.precision == "INT8"
        self.input_names = list(export.input_names)
        self.nms_after = export.nms  # NMS this runner applies after the model (None: none, or inside it)
        # paddle2onnx may fix an input's batch dimension to 1 (PicoDet's scale_factor [1, 2]):
        # such a model is run image by image and its outputs concatenated
        self.batch1 = False
        # a post-process with control flow, left in Paddle by the export (RetinaNet's per-image
        # loop and its NMS): run on the model's outputs, on Paddle's plain FP32 kernels
        self.post_process = None
        if export.post_process_inputs:
            self.post_process = open_backend("paddle", export.post_process_dir,
                                             BackendOptions(threads=self.threads, mkldnn=False, int8=False))

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def _feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ConfigError(f"ONNX model inputs {missing} are not fed; add them to input_list (fed: {sorted(feed)})")
        return {n: np.ascontiguousarray(feed[n], dtype=np.float32) for n in self.input_names}

    def _infer_batch(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feed.values())).shape[0]
        if not self.batch1 or batch == 1:
            return self._infer(feed)
        parts = [self._infer({n: a[i:i + 1] for n, a in feed.items()}) for i in range(batch)]
        return [np.concatenate(outs, axis=0) for outs in zip(*parts)]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self._infer_batch(self._feed(feed))
        if self.post_process is not None:
            names = self.export.post_process_inputs or []
            count = len(self.export.output_names)
            values = {**dict(zip(names[:count], outputs[:count])), **{n: feed[n] for n in names[count:]}}
            return self.post_process.run(values)
        if self.nms_after is None:
            return outputs
        bbox, num = multiclass_nms(outputs[0], outputs[1], self.nms_after)
        return [bbox, num]


class OnnxRuntimeBackend(OnnxRunner):
    backend = "onnxruntime"

    def __init__(self, export: OnnxExport, options: BackendOptions):
        super().__init__(export, options)
        if export.onnx_path.suffix != ".onnx":
            raise ConfigError(f"{export.onnx_path} is an OpenVINO IR, not ONNX: run it with --backend openvino")
        ort = require("onnxruntime", "onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(export.onnx_path), so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.batch1 = any(i.shape and i.shape[0] == 1 for i in self._session.get_inputs())
        self.mode = f"ONNX Runtime {ort.__version__} CPU" + (" (QDQ INT8)" if self.quantized else "") + \
            (" + Paddle post-process" if self.post_process is not None else "")

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(self.output_names, feed))

    def add_outputs(self, names: list[str]) -> None:
        """Also return these tensors of the ONNX graph (by name), after the model's outputs."""
        import onnx

        ort = require("onnxruntime", "onnxruntime")
        model = onnx.load(str(self.export.onnx_path))
        model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
        self._session = ort.InferenceSession(model.SerializeToString(), self._session.get_session_options(),
                                             providers=["CPUExecutionProvider"])
        self.output_names += list(names)


# OpenVINO's MulticlassNms (2026.4 CPU) sorts its boxes before keep_top_k with a comparator that
# takes scores closer than 1e-6 as equal only when that orders them by class: no strict weak
# order, and std::sort then writes out of bounds (heap corruption, a crash) when many boxes of
# several classes score within 1e-6 of each other (saturated scores at 1.0). On a grid of 2^-19
# (exact in float32) two scores are equal or differ by more than 1e-6, and the order is strict.
OPENVINO_NMS_SCORE_GRID = 2.0 ** 19


def openvino_nms(boxes: Any, scores: Any, nms: NMSSettings) -> Any:
    """MulticlassNms-9 on boxes [B, M, 4] and scores [B, C, M] (OpenVINO outputs), as the Paddle
    model's multiclass_nms3: its outputs 0 (bbox [N, 6]: class, score, x1, y1, x2, y2) and 2
    (bbox_num [B]); the scores snapped to OPENVINO_NMS_SCORE_GRID first."""
    opset = importlib.import_module("openvino.opset9")  # openvino >= 2025 (openvino.runtime is gone)
    grid = opset.constant(np.float32(OPENVINO_NMS_SCORE_GRID))
    snapped = opset.divide(opset.round(opset.multiply(scores, grid), "half_to_even"), grid)
    return opset.multiclass_nms(boxes, snapped, sort_result_type="classid", sort_result_across_batch=False,
                                output_type="i32", iou_threshold=nms.nms_threshold,
                                score_threshold=nms.score_threshold, nms_top_k=nms.nms_top_k,
                                keep_top_k=nms.keep_top_k, background_class=nms.background_label, nms_eta=1.0,
                                normalized=True)


class OpenVINOBackend(OnnxRunner):
    """Compiled once per input shape set (static shapes: OpenVINO's fast path)."""

    backend = "openvino"

    def __init__(self, export: OnnxExport, options: BackendOptions):
        super().__init__(export, options)
        if options.openvino_precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"openvino precision {options.openvino_precision!r} is not one of {OPENVINO_PRECISIONS}")
        self._ov = require("openvino", "openvino")
        self._core = self._ov.Core()
        self._model = self._core.read_model(str(export.onnx_path))
        nms_inside = export.nms is not None and options.openvino_nms
        if nms_inside:
            self._append_nms(export.nms)
            self.nms_after = None
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        self.batch1 = any(i.get_partial_shape().rank.is_static and i.get_partial_shape()[0].is_static
                          and i.get_partial_shape()[0].get_length() == 1 for i in self._model.inputs)
        self._compiled: dict[tuple, Any] = {}
        self._config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": options.openvino_precision}
        self.mode = f"OpenVINO {self._ov.__version__.split('-')[0]} CPU {options.openvino_precision}" + \
            (" (QDQ INT8)" if self.quantized else "") + (" + NMS" if nms_inside else "") + \
            (" + Paddle post-process" if self.post_process is not None else "")

    def _append_nms(self, nms: NMSSettings) -> None:
        """Replace the outputs (boxes [B, M, 4], scores [B, C, M]) by MulticlassNms-9 on them:
        bbox [N, 6] (class, score, x1, y1, x2, y2) and bbox_num [B], as the Paddle model's NMS."""
        opset = importlib.import_module("openvino.opset9")  # openvino >= 2025 (openvino.runtime is gone)
        results = list(self._model.get_results())
        if len(results) < 2:
            raise ConfigError(f"{self.export.onnx_path}: an export cut before NMS must output boxes and scores; "
                              f"it has {len(results)} output(s)")
        node = openvino_nms(results[0].input_value(0), results[1].input_value(0), nms)
        for result in results:
            self._model.remove_result(result)
        node.output(0).get_tensor().set_names({"multiclass_nms.bbox"})
        node.output(2).get_tensor().set_names({"multiclass_nms.bbox_num"})
        self._model.add_results([opset.result(node.output(0)), opset.result(node.output(2))])

    def add_outputs(self, names: list[str]) -> None:
        """Also return these tensors of the ONNX graph (by name), after the model's outputs."""
        self._model.add_outputs(list(names))
        self._compiled.clear()
        self.output_names += list(names)

    def compile_for(self, feed: dict[str, np.ndarray], properties: dict[str, Any] | None = None) -> Any:
        """The model (with its NMS) compiled for the shapes of `feed`, with the runner's settings
        overridden by `properties` (e.g. the THROUGHPUT hint; a value None drops the runner's
        setting, e.g. NUM_STREAMS for the hint to choose)."""
        model = self._model.clone()
        model.reshape({n: self._ov.PartialShape(list(a.shape)) for n, a in feed.items()})
        config = {k: v for k, v in {**self._config, **(properties or {})}.items() if v is not None}
        return self._core.compile_model(model, "CPU", config)

    def _request(self, feed: dict[str, np.ndarray]):
        key = tuple((n, a.shape) for n, a in feed.items())
        if key not in self._compiled:
            self._compiled[key] = self.compile_for(feed).create_infer_request()
        return self._compiled[key]

    def _infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = self._request(feed)
        request.infer(feed, share_inputs=True)  # _feed's arrays are float32 and contiguous: no copy into the request
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]

    def profiler(self, feed: dict[str, np.ndarray], warmup: int = 5
                 ) -> tuple[Callable[[], dict[str, float]], list[tuple[str, list[str], str]]]:
        """A profiling copy of the compiled model (OpenVINO's PERF_COUNT; the runner itself is
        unchanged): a function that runs it once on `feed` and returns microseconds per executed
        node, and the compiled model's nodes in order with the original (ONNX) layer names fused
        into each and the node's runtime type (Convolution, Reorder, FakeQuantize, ...)."""
        feed = self._feed(feed)
        request = self.compile_for(feed, {"PERF_COUNT": True}).create_infer_request()
        for _ in range(warmup):
            request.infer(feed)

        def run() -> dict[str, float]:
            request.infer(feed)
            return {info.node_name: info.real_time.total_seconds() * 1e6 for info in request.profiling_info}

        nodes = []
        for op in request.get_compiled_model().get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            names = rt["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in rt else []
            nodes.append((op.get_friendly_name(), names, rt["layerType"].astype(str) if "layerType" in rt else ""))
        return run, nodes

    def precision_in_use(self) -> str:
        """What the compiled model really runs at (checks the hint was honoured)."""
        if not self._compiled:
            return self.options.openvino_precision
        request = next(iter(self._compiled.values()))
        value = request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # "f32" / "bf16"


def median_profile(runs: list[dict[str, float]], nodes: list[tuple]) -> list[tuple[list[str], float, str]]:
    """(original layer names, median µs, runtime node type) per node, from a profiler's runs
    (OpenVINOBackend.profiler)."""
    return [(names, float(np.median([r.get(node, 0.0) for r in runs])), kind[0] if kind else "")
            for node, names, *kind in nodes]


def open_backend(name: str, model: str | Path | ModelFiles, options: BackendOptions | None = None,
                 model_filename: str | None = None, params_filename: str | None = None,
                 export_dir: str | Path | None = None) -> Predictor | OnnxRunner:
    """The one factory of runners: `model` on backend `name`.

    `model` is a Paddle inference model (its folder, or its ModelFiles), or (ONNX backends) a
    ptqdet ONNX export folder. A Paddle model given to an ONNX backend is exported first, into
    export_dir (or a temporary folder kept for the runner's life).
    """
    options = options or BackendOptions()
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if isinstance(model, ModelFiles):
        files: ModelFiles | None = model
        model = model.model_dir
    else:
        model, files = Path(model), None
    if name == "paddle":
        if is_onnx_export(model):
            raise ConfigError(f"backend 'paddle' runs Paddle models, not an ONNX export: {model}")
        return Predictor(files or resolve_model_files(model, model_filename, params_filename), options)
    if options.device != "cpu":
        raise ConfigError(f"backend {name!r} runs on CPU here; for GPU use --backend paddle (TensorRT)")
    cls = OpenVINOBackend if name == "openvino" else OnnxRuntimeBackend
    require(cls.backend, cls.backend)  # fail before a costly export
    if is_onnx_export(model):
        return cls(load_export(model), options)
    files = files or resolve_model_files(model, model_filename, params_filename)
    tmp = None
    if export_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ptqdet_onnx_")
        export_dir = Path(tmp.name) / "onnx"
    runner = cls(export_onnx(files, export_dir), options)
    runner._tmp = tmp  # keep the temporary export alive as long as the runner  # noqa: SLF001
    return runner
