"""The deployment runtime in the analysis: what each layer costs in float there, and the
latency of the models the analysis chooses, measured on it.

- `deploy_models`: the FP32 model and the all-INT8 model in the form the runtime loads (PTQ with
  the config's `PTQ:` section in QDQ form, ONNX exports for OpenVINO / ONNX Runtime), cached
  in the analysis' work folder (rebuilt when the model or the PTQ section changes).
- `layer_costs`: per quantized layer, its time in the FP32 model and in the INT8 model on the
  runtime (OpenVINO's per-node profiles of both, run by run in alternation, 1 image, the
  analysis' latency threads); the cost of
  keeping the layer in float is the difference (negative: the layer is faster in float).
- `float_variant`: the all-INT8 ONNX model with some layers back in float (their weights
  dequantized, their input quantization bypassed), without a calibration: for timing only.
- `measured_base`: of the layers the profile says are faster in float, those that make the whole
  model faster, measured end to end on the runtime with float_variant (a float layer between
  INT8 layers also moves conversions that the per-node profile does not charge to it).
- `graph_costs`, `conv_kernel_ratio`: the convolutions' own time on OpenVINO (what the INT8
  kernels gain on this CPU) and the time and Reorder/FakeQuantize nodes outside them, INT8
  against FP32 (what the INT8 graph adds around them); tools/bench_recovery.py reports both.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import BackendOptions, median_profile, open_backend
from ..benchmark import ModelSet, measure_models, prepare_models
from ..config import PTQDetConfig
from ..export import export_onnx
from ..files import ModelFiles
from .context import AnalysisContext
from .results import AnalysisOptions, DeployInfo
from .search import MIN_SAVING_MS, base_candidates

PROFILED_BACKENDS = ("openvino",)  # per-layer costs: the backends with a per-node profile
LATENCY_METHOD = "alternated-median-profile_paired-runs"  # part of the cached costs' key: change it with the method


def qdq_config(cfg: PTQDetConfig) -> PTQDetConfig:
    """cfg with PTQ.onnx_format on: the form every runtime loads (Paddle Inference runs it too)."""
    return dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, onnx_format=True))


def deploy_models(cfg: PTQDetConfig, work_dir: Path, backend: str, progress: bool) -> tuple[ModelSet, bool]:
    """FP32 and all-INT8 models for `backend` (ONNX exports unless it is paddle), cached; and
    whether the INT8 model was calibrated now (not reused)."""
    models = prepare_models(qdq_config(cfg), work_dir, need_onnx=backend != "paddle", progress=progress,
                            log=lambda _msg: None)
    return models, models.quantized_now


def deploy_models_in_task(config_path: Path, cwd: Path, work_dir: Path, backend: str) -> tuple[ModelSet, bool]:
    """deploy_models in a process of its own (analysis.py --workers: a Ray task): the config
    loaded there (ppdet's reader transforms live in its process-wide workspace, which a pickled
    config does not carry), relative paths resolved from the driver's folder `cwd`."""
    from ..config import load_config
    from ..stdout import quiet_libraries

    quiet_libraries(True)
    os.chdir(cwd)
    return deploy_models(load_config(config_path), work_dir, backend, progress=False)


def deploy_form(files: ModelFiles, backend: str, export_dir: Path) -> Path:
    """The folder `backend` loads for a Paddle model: the model itself, or its ONNX export."""
    if backend == "paddle":
        return files.model_dir
    return export_onnx(files, export_dir).onnx_path.parent


def runtime_form(models: ModelSet, precision: str, backend: str) -> Path:
    """The folder `backend` loads for the FP32 or the all-INT8 model of `models`."""
    if backend == "paddle":
        return (models.fp32 if precision == "FP32" else models.int8).model_dir
    value = models.onnx.get(precision)
    if not isinstance(value, Path):
        raise RuntimeError(f"ONNX export of the {precision} model failed: {value}")
    return value


def onnx_layer_nodes(onnx_path: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Per Paddle weight: (names of its ONNX Conv and the BatchNormalization fed by it, names
    of the QuantizeLinear/DequantizeLinear on its input). paddle2onnx names a Conv's weight
    after the Paddle weight; ptqdet's QDQ export adds ".dequantized"."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers: dict[str, tuple[set[str], set[str]]] = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = node.input[1].removesuffix(".dequantized")
        own = {node.name} | {c.name for c in consumers.get(node.output[0], []) if c.op_type == "BatchNormalization"}
        qdq: set[str] = set()
        dq = producer.get(node.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            qdq.add(dq.name)
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                qdq.add(q.name)
        layers[weight] = (own, qdq)
    return layers


def attribute(profile: list[tuple[list[str], float]], layers: dict[str, tuple[set[str], set[str]]],
              with_quantize: bool = True) -> dict[str, float]:
    """Microseconds per layer: each executed node goes to the layer whose Conv (or batch norm)
    it runs, else (`with_quantize`) to the layer whose input quantization it runs; others are
    shared by all."""
    times = dict.fromkeys(layers, 0.0)
    for names, us, *_ in profile:
        found = set(names)
        owner = next((w for w, (own, _) in layers.items() if own & found), None)
        if owner is None and with_quantize:
            owner = next((w for w, (_, qdq) in layers.items() if qdq & found), None)
        if owner is not None:
            times[owner] += us
    return times


def alternated_profiles(backend: str, exports: list[Path], threads: int, feed: dict[str, np.ndarray],
                        runs: int) -> list[list[tuple[list[str], float]]]:
    """Per-node profiles (OpenVINOBackend.profiler) of several exports on `backend`, run by run in
    alternation, `runs` each, batch 1, median per node: other work on the machine slows them alike."""
    feed = {k: v[:1] for k, v in feed.items()}
    profilers = [open_backend(backend, export, BackendOptions(threads=threads)).profiler(feed) for export in exports]
    times: list[list[dict[str, float]]] = [[] for _ in profilers]
    for _ in range(runs):
        for (run, _nodes), model_times in zip(profilers, times):
            model_times.append(run())
    return [median_profile(model_times, nodes) for (_run, nodes), model_times in zip(profilers, times)]


def layer_costs(models: ModelSet, backend: str, threads: int, feed: dict[str, np.ndarray], runs: int = 30
                ) -> dict[str, dict[str, float]]:
    """Per layer quantized in the INT8 model (its Conv reads a quantized input; the layers of
    skip_tensor_list are float there already), µs in the FP32 and the INT8 model on `backend` and
    the cost of float (ms: fp32 - int8). Empty when the backend has no per-node profile here
    (PROFILED_BACKENDS)."""
    if backend not in PROFILED_BACKENDS:
        return {}
    exports = [Path(models.onnx[precision]) for precision in ("FP32", "INT8")]
    nodes = [onnx_layer_nodes(export / "model.onnx") for export in exports]
    fp32, int8 = (attribute(profile, layers)
                  for layers, profile in zip(nodes, alternated_profiles(backend, exports, threads, feed, runs)))
    return {w: {"fp32_us": round(fp32.get(w, 0.0), 1), "int8_us": round(us, 1),
                "cost_ms": (fp32.get(w, 0.0) - us) / 1000.0}
            for w, us in int8.items() if nodes[1][w][1]}


# the runtime nodes graph_costs counts: what ptqdet's graph may add around the convolutions
COUNTED_NODES = ("Reorder", "FakeQuantize")


@dataclasses.dataclass
class GraphCost:
    """One model's OpenVINO time in its convolutions and outside them (ms, per-node profile
    medians), and how many Reorder and FakeQuantize nodes it runs on their own."""

    conv_ms: float
    outside_ms: float  # input quantizations, reorders and every other node
    nodes: dict[str, int]  # COUNTED_NODES type -> executed nodes of that type


def graph_costs(fp32_export: Path, int8_export: Path, threads: int, feed: dict[str, np.ndarray],
                runs: int = 200) -> tuple[GraphCost, GraphCost]:
    """(FP32, INT8) GraphCost on OpenVINO: both models profiled per node in alternation
    (alternated_profiles); a node is a convolution's when it runs a Conv (with what is fused into
    it). An OpenVINO IR made from the FP32 export (NNCF's) keeps its Conv names: its convolutions
    are read there."""
    def convolutions(export: Path) -> dict[str, tuple[set[str], set[str]]]:
        onnx_path = export / "model.onnx"
        return onnx_layer_nodes(onnx_path if onnx_path.is_file() else fp32_export / "model.onnx")

    exports = [fp32_export, int8_export]
    costs = []
    for export, profile in zip(exports, alternated_profiles("openvino", exports, threads, feed, runs)):
        conv = sum(attribute(profile, convolutions(export), with_quantize=False).values())
        total = sum(us for _, us, _ in profile)
        kinds = [kind for _, _, kind in profile]  # median_profile: (names, µs, runtime node type)
        costs.append(GraphCost(conv / 1000.0, (total - conv) / 1000.0, {k: kinds.count(k) for k in COUNTED_NODES}))
    if not costs[0].conv_ms or not costs[1].conv_ms:
        raise RuntimeError(f"no convolution found in the OpenVINO profile of {fp32_export} or {int8_export}")
    return costs[0], costs[1]


def conv_kernel_ratio(fp32_export: Path, int8_export: Path, threads: int, feed: dict[str, np.ndarray],
                      runs: int = 200) -> float:
    """OpenVINO time of the convolutions alone, INT8 over FP32 (graph_costs), leaving out the
    input quantizations, reorders and every other node. What the INT8 convolution kernels gain
    on this CPU: with convolutions most of the time, the whole model's INT8/FP32 ratio cannot go
    far below it whatever graph surrounds them."""
    fp32, int8 = graph_costs(fp32_export, int8_export, threads, feed, runs)
    return int8.conv_ms / fp32.conv_ms


def _dequantized(graph: Any, dq: Any) -> np.ndarray | None:
    """The float value of a DequantizeLinear of constant initializers (None: not one)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    if dq.op_type != "DequantizeLinear" or not all(n in inits for n in dq.input):
        return None
    arrays = [numpy_helper.to_array(inits[n]).astype(np.float32) for n in dq.input]
    x, scale = arrays[0], arrays[1]
    zero = arrays[2] if len(arrays) > 2 else np.float32(0)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((x - zero) * scale).astype(np.float32)


def float_variant(int8_export: Path, layers: list[str], out_dir: Path) -> Path:
    """A copy of an INT8 ONNX export (ptqdet's QDQ) with `layers` (Paddle weight names) computed in
    float: each one's Conv reads its input before quantization and its dequantized weights.
    ValueError when a layer's Conv is not in that QDQ form."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(int8_export) / "model.onnx"))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    wanted, found = set(layers), set()
    for node in graph.node:
        weight = node.input[1].removesuffix(".dequantized") if node.op_type == "Conv" and len(node.input) > 1 else ""
        if weight not in wanted:
            continue
        dq_w, dq_x = producer.get(node.input[1]), producer.get(node.input[0])
        value = _dequantized(graph, dq_w) if dq_w is not None else None
        q_x = producer.get(dq_x.input[0]) if dq_x is not None and dq_x.op_type == "DequantizeLinear" else None
        if value is None or q_x is None or q_x.op_type != "QuantizeLinear":
            raise ValueError(f"{int8_export}: the Conv of {weight} is not in QDQ form")
        if weight not in found:  # convs sharing a weight (PP-YOLOE's DFL projection) share its float copy
            graph.initializer.append(numpy_helper.from_array(value, f"{weight}.float"))
        node.input[0], node.input[1] = q_x.input[0], f"{weight}.float"
        found.add(weight)
    if wanted - found:
        raise ValueError(f"{int8_export}: no Conv in QDQ form reads the weights of {sorted(wanted - found)}")
    _prune(graph)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(int8_export) / "export.json", out_dir / "export.json")
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir


def _prune(graph: Any) -> None:
    """Drop the nodes and initializers nothing reads any more (the bypassed Q/DQ)."""
    while True:
        used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {n for node in graph.node for n in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def paired_saving(before: list[float], after: list[float]) -> tuple[float, float]:
    """Median of the paired differences (ms; positive: `after` is faster) and its standard error
    (1.4826 x MAD / sqrt(n)): robust to the bursts of a shared machine."""
    diffs = np.asarray(before) - np.asarray(after)
    median = float(np.median(diffs))
    mad = float(np.median(np.abs(diffs - median)))
    return median, 1.4826 * mad / max(np.sqrt(len(diffs)), 1.0)


def measured_base(candidates: list[str], int8_export: Path, work_dir: Path,
                  time_models: Callable[[dict[str, Path]], dict[str, list[float]]],
                  min_saving_ms: float) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy, most promising first: a candidate joins the base when the all-INT8 model with the
    base and it in float is faster than with the base alone by at least min_saving_ms and by
    two standard errors (paired runs, end to end). Returns the base and one record per candidate."""
    base: list[str] = []
    records = []
    current = Path(int8_export)
    for i, layer in enumerate(candidates):
        trial = float_variant(int8_export, base + [layer], work_dir / f"variant_{i}")
        times = time_models({"base": current, "trial": trial})
        saving, error = paired_saving(times["base"], times["trial"])
        kept = saving >= max(min_saving_ms, 2 * error)
        records.append({"layer": layer, "base_ms": round(float(np.median(times["base"])), 3),
                        "with_layer_ms": round(float(np.median(times["trial"])), 3),
                        "saving_ms": round(saving, 3), "error_ms": round(error, 3), "kept": kept})
        if kept:
            base.append(layer)
            current = trial
    return base, records


def deploy_backend(cfg: PTQDetConfig, opts: AnalysisOptions) -> str:
    """The runtime the analysis deploys to: the config's deploy_backend on CPU, Paddle on GPU."""
    return cfg.deploy_backend if opts.device == "cpu" else "paddle"


def deploy_stage(cfg: PTQDetConfig, opts: AnalysisOptions, ctx: AnalysisContext,
                 made: tuple[ModelSet, bool] | None = None) -> DeployInfo:
    """The deployment runtime's FP32 and all-INT8 models (cached in the work folder; made: what
    deploy_models already returned), the cost of float per layer on it and the latency base
    (both cached per runtime and threads)."""
    from ..data import latency_feed

    backend = deploy_backend(cfg, opts)
    info = DeployInfo(backend=backend, threads=opts.deploy_threads)
    with ctx.timed("deploy_models"):
        info.models, calibrated = made or deploy_models(cfg, ctx.work_dir / "deploy", backend, opts.progress)
        ctx.counters.calibrations += int(calibrated)
        info.feed = latency_feed(cfg)
    if backend not in PROFILED_BACKENDS or not opts.latency_aware:
        return info
    cached = ctx.section(f"latency_{backend}_{opts.deploy_threads}t_{LATENCY_METHOD}")
    if "base" not in cached:
        with ctx.timed("layer_costs"):
            costs = layer_costs(info.models, backend, opts.deploy_threads, info.feed)
            candidates = base_candidates({n: c["cost_ms"] for n, c in costs.items()})
            variants = ctx.work_dir / "deploy" / "variants"

            def time_models(models: dict[str, Path]) -> dict[str, list[float]]:
                rows = measure_models(cfg, models, backend, opts.deploy_threads, info.feed, progress=False)
                return {name: row.times_ms for name, row in rows.items()}

            base, records = measured_base(candidates, runtime_form(info.models, "INT8", backend), variants,
                                          time_models, MIN_SAVING_MS)
            shutil.rmtree(variants, ignore_errors=True)
            cached.update({"costs": costs, "base": base, "base_trials": records})
            ctx.save()
    info.layer_costs, info.base, info.base_trials = cached["costs"], cached["base"], cached["base_trials"]
    return info
