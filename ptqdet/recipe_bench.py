"""Recovery benchmark: PTQ recipes x models -> mAP, layers in float, PTQ time and deployed latency.

For each config and recipe: PTQ in QDQ form (onnx_format forced on, so that the same model
deploys), its mAP as the quantized graph computes it (Paddle, fake-quant ops on FP32 kernels:
"simulated") and on the recommended runtime (OpenVINO, ptqdet's QDQ export), then latency on
that runtime at each thread count: FP32 (f32), FP32 at bf16 (the float a CPU with native bf16
would run) and INT8, timed run by run in alternation (LATENCY_RUNS each), batch 1, one evaluation image,
and the convolutions' own time INT8/FP32 (ptqdet.analysis.deploy.conv_kernel_ratio).
The runtime's mAPs are scored in a child process (map_in_child), so that a runtime crash costs
one row, not the benchmark. ptqdet.peers adds rows for NNCF's PTQ of the same export.
"""
from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis.deploy import COUNTED_NODES, graph_costs
from .backends import BackendOptions, open_backend
from .benchmark import INT8_STAMP, BenchSettings, ModelSet, bench_backend, quantize_cached
from .config import PTQDetConfig
from .export import ExportError, export_onnx
from .files import resolve_model_files
from .metrics import evaluate
from .qdq import QDQ_FORMAT
from .quantize import layer_weights
from .recipes import Recipe, apply_recipe
from .report import mAP_points, markdown_table, write_json

RUNTIME = "openvino"
# latency: runs per model, one at a time in alternation (in blocks of runs per model, the INT8/FP32
# ratio at 2 threads moved widely from one idle run to the next: docs/results/findings.md)
LATENCY_RUNS = 200


@dataclass
class RecipeRow:
    model: str
    recipe: str
    fp32_map: float | None = None
    sim_map: float | None = None  # the quantized Paddle graph on FP32 kernels
    runtime_map: float | None = None  # OpenVINO INT8
    runtime_bf16_map: float | None = None  # OpenVINO INT8, its float ops in bf16
    float_layers: int | None = None
    total_layers: int | None = None
    ptq_seconds: float | None = None
    latency: dict[int, dict[str, float | None]] = field(default_factory=dict)  # threads -> precision -> ms
    conv_ratio: dict[int, float] = field(default_factory=dict)  # threads -> convolutions' own time, INT8/FP32
    outside_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # threads -> FP32, INT8 outside convs
    nodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # Reorder/FakeQuantize -> FP32, INT8 node counts
    error: str | None = None

    def int8(self, threads: int) -> tuple[float | None, str]:
        """The faster INT8 run (float ops in f32 or in bf16) and which it was."""
        times = self.latency.get(threads, {})
        runs = [(times[k], k) for k in ("INT8", "INT8 (bf16)") if times.get(k)]
        return min(runs) if runs else (None, "")

    def ratio(self, threads: int, baseline: str) -> float | None:
        int8, _ = self.int8(threads)
        base = self.latency.get(threads, {}).get(baseline)
        return int8 / base if int8 and base else None


def model_name(cfg: PTQDetConfig) -> str:
    """The config's folder and name (configs/demo/x.yaml -> demo/x): one name per model."""
    return f"{cfg.path.parent.name}/{cfg.path.stem}"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def fp32_reference(cfg: PTQDetConfig, work_dir: Path, progress: bool) -> tuple[float, Path]:
    """FP32 mAP (Paddle) and the FP32 ONNX export, once per model."""
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    runner = open_backend("paddle", fp32.model_dir, BackendOptions(), fp32.model_filename, fp32.params_filename)
    fp32_map = evaluate(runner, cfg, "EvalDataset", progress=progress, desc="FP32").map
    return fp32_map, export_onnx(fp32, work_dir / "onnx_fp32").onnx_path.parent


def bench_recipe(cfg: PTQDetConfig, recipe: Recipe, work_dir: Path, fp32_map: float, fp32_onnx: Path,
                 threads: list[int], feed: dict, progress: bool = True) -> RecipeRow:
    """One recipe on one model: PTQ, simulated and runtime mAP (both kept with the PTQ model and
    reused while it is), then latency per thread count."""
    row = RecipeRow(model_name(cfg), recipe.name, fp32_map=fp32_map)
    variant = apply_recipe(cfg, recipe, onnx_format=True)
    int8_dir = work_dir / recipe.name.replace(", ", "_").replace(" ", "_")
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    try:
        stamp, _ = quantize_cached(variant, fp32, int8_dir, progress, log=lambda _msg: None)
        row.ptq_seconds = stamp["seconds"]
        row.total_layers = len(layer_weights(fp32, variant.ptq.quantizable_op_type))
        row.float_layers = row.total_layers - stamp["quantized"]
        int8_onnx = export_onnx(resolve_model_files(int8_dir / "int8"), int8_dir / "onnx_int8").onnx_path.parent
        if stamp.get("qdq_format") != QDQ_FORMAT:  # runtime mAPs measured on an older export format
            stamp = {k: v for k, v in stamp.items() if k not in ("runtime_map", "runtime_bf16_map")}
            stamp["qdq_format"] = QDQ_FORMAT
        measure_maps(cfg, row, int8_onnx, stamp, int8_dir / INT8_STAMP, progress,
                     simulated=int8_dir / "int8")
    except (ExportError, RuntimeError, ValueError, OSError, AssertionError) as exc:
        row.error = _short(exc)
        return row
    measure_latency(cfg, row, ModelSet(fp32, resolve_model_files(int8_dir / "int8"),
                                       {"FP32": fp32_onnx, "INT8": int8_onnx}), threads, feed, progress)
    return row


def measure_maps(cfg: PTQDetConfig, row: RecipeRow, int8_export: Path, stamp: dict, stamp_path: Path,
                 progress: bool = True, simulated: Path | None = None) -> None:
    """The INT8 model's mAPs into `row`: on the runtime in f32 and in bf16 (from `int8_export`)
    and, given the quantized Paddle model `simulated`, on Paddle's FP32 kernels. Each is kept in
    `stamp` (written to `stamp_path` as soon as it is measured) and reused from there."""
    measures = {"runtime_map": (int8_export, BackendOptions(), RUNTIME, RUNTIME),
                "runtime_bf16_map": (int8_export, BackendOptions(openvino_precision="bf16"), RUNTIME,
                                     f"{RUNTIME} bf16")}
    if simulated is not None:
        measures = {"sim_map": (simulated, BackendOptions(mkldnn=False), "paddle", "simulated"), **measures}
    for key, (model, options, backend, label) in measures.items():
        if key in stamp:
            continue
        desc = f"{row.recipe} {label}"
        if backend == RUNTIME:
            stamp[key] = map_in_child(cfg.path, model, options, progress, desc)
        else:
            stamp[key] = evaluate(open_backend(backend, model, options), cfg, "EvalDataset", progress=progress,
                                  desc=desc).map
        write_json(stamp_path, stamp)
    row.sim_map, row.runtime_map = stamp.get("sim_map"), stamp["runtime_map"]
    row.runtime_bf16_map = stamp["runtime_bf16_map"]


def map_in_child(config_path: Path, model: Path, options: BackendOptions, progress: bool = True,
                 desc: str = "", attempts: int = 2, score: Callable[..., float] | None = None) -> float:
    """EvalDataset mAP of an export on the runtime, scored in a fresh process (the config loaded
    again from `config_path`). OpenVINO 2026.4.1 has crashed (SIGSEGV in a worker thread) now
    and then while scoring INT8 models in bf16 on an AMD EPYC (docs/status.md), which ended the
    whole benchmark; a crashed child is scored again in a new one, up to `attempts` times, and
    then raises RuntimeError (the row's error) instead. `score`: what the child runs (tests)."""
    context = multiprocessing.get_context("spawn")
    for attempt in range(1, attempts + 1):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                return pool.submit(score or _child_map, str(config_path), str(model), options, progress, desc).result()
            except BrokenProcessPool:
                print(f"warning: {RUNTIME} crashed scoring {model} ({options.openvino_precision}), "
                      f"attempt {attempt} of {attempts}", file=sys.stderr)
    raise RuntimeError(f"{RUNTIME} crashed {attempts} times scoring {model} ({options.openvino_precision})")


def _child_map(config_path: str, model: str, options: BackendOptions, progress: bool, desc: str) -> float:
    from .config import load_config
    from .stdout import quiet_libraries

    quiet_libraries(quiet=True)
    cfg = load_config(config_path)
    return evaluate(open_backend(RUNTIME, Path(model), options), cfg, "EvalDataset", progress=progress,
                    desc=desc).map


def measure_latency(cfg: PTQDetConfig, row: RecipeRow, models: ModelSet, threads: list[int], feed: dict,
                    progress: bool = True) -> None:
    """OpenVINO latency of FP32, FP32 at bf16 and the INT8 export models.onnx["INT8"] (f32 and
    bf16), run by run in alternation, at each thread count, into `row`; and the convolutions'
    own time, INT8 over FP32, and the time and nodes outside them (ptqdet.analysis.deploy.graph_costs)."""
    errors = [row.error] if row.error else []
    for n in threads:
        settings = BenchSettings(backends=(RUNTIME,), threads=n, progress=progress, rounds=LATENCY_RUNS, repeats=1)
        rows = bench_backend(cfg, models, RUNTIME, feed, settings, measure_map=False)
        row.latency[n] = {r.precision: r.median for r in rows}
        errors += [f"{r.precision} ({n}T): {r.error}" for r in rows if r.error]
        try:
            fp32, int8 = graph_costs(Path(models.onnx["FP32"]), Path(models.onnx["INT8"]), n, feed, runs=LATENCY_RUNS)
            row.conv_ratio[n] = int8.conv_ms / fp32.conv_ms
            row.outside_ms[n] = (fp32.outside_ms, int8.outside_ms)
            row.nodes = {kind: (fp32.nodes[kind], int8.nodes[kind]) for kind in COUNTED_NODES}
        except (RuntimeError, OSError, ValueError) as exc:
            errors.append(f"convolution profile ({n}T): {_short(exc)}")
    row.error = "; ".join(errors) or None


# a row that is not a recipe (ptqdet.peers: another tool's PTQ of the same model), made from
# (cfg, work_dir, fp32_map, fp32_onnx, threads, feed, progress) like bench_recipe's rows
PeerRow = Callable[[PTQDetConfig, Path, float, Path, list[int], dict, bool], RecipeRow]


def run_recipes(cfg: PTQDetConfig, recipes: list[Recipe], work_dir: Path, threads: list[int], progress: bool = True,
                log: Callable[[str], None] = print, on_row: Callable[[RecipeRow], None] | None = None,
                peers: Sequence[tuple[str, PeerRow]] = ()) -> list[RecipeRow]:
    """Every recipe on one model, then each (name, row maker) of `peers` on the same FP32
    reference, export and latency image."""
    from .data import latency_feed

    fp32_map, fp32_onnx = fp32_reference(cfg, work_dir, progress)
    feed = latency_feed(cfg)
    rows = []
    jobs = [(recipe.name, lambda r=recipe: bench_recipe(cfg, r, work_dir, fp32_map, fp32_onnx, threads, feed,
                                                        progress)) for recipe in recipes]
    jobs += [(name, lambda make=make: make(cfg, work_dir, fp32_map, fp32_onnx, threads, feed, progress))
             for name, make in peers]
    for name, job in jobs:
        log(f"{cfg.path.stem}: {name}")
        rows.append(job())
        if on_row:
            on_row(rows[-1])
    return rows


def recipes_table(rows: list[RecipeRow], threads: list[int]) -> str:
    headers = ["model", "recipe", "mAP simulated", "mAP OpenVINO INT8 (b)", "FP32 mAP", "layers in float", "PTQ s"]
    for n in threads:
        headers += [f"INT8 ms ({n}T)", f"INT8/FP32 ({n}T)", f"INT8/bf16 ({n}T)", f"conv INT8/FP32 ({n}T)",
                    f"outside convs ms FP32 / INT8 ({n}T)"]
    headers += [f"{kind} nodes FP32 / INT8" for kind in COUNTED_NODES]
    table = []
    for r in rows:
        runtime = f"{_points(r.runtime_map)} ({_points(r.runtime_bf16_map)})" if r.runtime_map is not None else None
        cells: list[Any] = [r.model, r.recipe, _points(r.sim_map), runtime, _points(r.fp32_map),
                            f"{r.float_layers} / {r.total_layers}" if r.total_layers else None,
                            round(r.ptq_seconds) if r.ptq_seconds else None]
        for n in threads:
            ms, which = r.int8(n)
            fp, bf = r.ratio(n, "FP32"), r.ratio(n, "FP32 (bf16)")
            mark = "b" if which == "INT8 (bf16)" else ""
            conv = r.conv_ratio.get(n)
            outside = r.outside_ms.get(n)
            cells += [f"{ms:.1f}{mark}" if ms else None, f"{fp:.2f}" if fp else None, f"{bf:.2f}" if bf else None,
                      f"{conv:.2f}" if conv else None, f"{outside[0]:.2f} / {outside[1]:.2f}" if outside else None]
        cells += [f"{r.nodes[kind][0]} / {r.nodes[kind][1]}" if kind in r.nodes else None for kind in COUNTED_NODES]
        table.append(cells)
    text = markdown_table(headers, table) + ("\n\nINT8 ms: the faster of the INT8 model's two OpenVINO runs, its "
                                              "remaining float ops in f32 or (b) in bf16. conv INT8/FP32: the "
                                              "convolutions' own OpenVINO node time (per-node profile, median), INT8 "
                                              "over FP32, without quantizations, reorders or other nodes: what the "
                                              "INT8 kernels gain on this CPU. outside convs: the time of every other "
                                              "node (input quantizations, reorders, float ops) of the FP32 and the "
                                              "INT8 model, f32, same profile; Reorder and FakeQuantize nodes: those "
                                              "each model runs on their own (not fused into a convolution).")
    errors = [f"- {r.model} / {r.recipe}: {r.error}" for r in rows if r.error]
    return text + ("\n\nErrors:\n" + "\n".join(errors) if errors else "")


def _points(value: float | None) -> str | None:
    return f"{mAP_points(value):.1f}" if value is not None else None
