"""Deployment benchmark: latency of FP32 and INT8 on every backend, with the mAP of each.

For one config: the FP32 model (model_dir), its INT8 model (PTQ with the config's `PTQ:`
section, rebuilt when the FP32 model or the settings change) and the ONNX exports of both.
Per backend, the runners (FP32, INT8, and on OpenVINO also FP32 at bf16) are warmed up, then
timed in interleaved rounds (FP32, INT8, … then the reverse order), batch 1, on one
pre-processed val image; each row gives median and p10-p90 of all timed runs, INT8/FP32
ratio, and the mAP of that very runner on the dataset, so that a fast but wrong runtime is
caught. A row that cannot run (package missing, conversion failed) says why; no row is hidden.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, BackendOptions, open_backend
from .config import ConfigError, PTQDetConfig
from .data import dataset_digest
from .export import ExportError, export_onnx, load_export
from .files import ModelFiles, read_cache_json, resolve_model_files
from .metrics import evaluate
from .paddle_static import fingerprint
from .report import mAP_points, markdown_table, write_json

MAP_TOLERANCE = 1.0  # points: an INT8 row agrees with Paddle INT8 when within this
PAIRED_ROUNDS = 100  # measure_models: paired runs per model


@dataclass
class BenchSettings:
    backends: tuple[str, ...] = BACKENDS
    threads: int = 2
    warmup: int = 10
    rounds: int = 5
    repeats: int = 20  # timed runs per runner and round
    dataset_key: str = "EvalDataset"
    openvino_bf16: bool = True  # also an FP32 row at OpenVINO's bf16 precision
    # also OpenVINO FP32/INT8 rows that run a cut-off NMS after the model (PaddleDetection's op)
    # instead of inside it: what running it inside saves, measured in the same rounds
    openvino_nms_after: bool = False
    goal_ratio: float | None = None  # INT8/FP32 latency the best backend should reach
    progress: bool = True


@dataclass
class Row:
    backend: str
    precision: str  # FP32, INT8, FP32 (bf16), FP32 (NMS after), INT8 (NMS after)
    model: str
    baseline: str = "FP32"  # precision of the row this row's latency ratio is taken to
    runtime: str = ""
    times_ms: list[float] = field(default_factory=list)
    map: float | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    def spread(self) -> tuple[float, float] | None:
        if not self.times_ms:
            return None
        p10, p90 = np.percentile(self.times_ms, [10, 90])
        return float(p10), float(p90)


@dataclass
class ModelSet:
    """The models one benchmark compares; an export error is kept as the row's reason."""

    fp32: ModelFiles
    int8: ModelFiles
    onnx: dict[str, Path | str]  # FP32/INT8 -> export folder, or the error text
    quantized_now: bool = False  # the INT8 model was calibrated by this call, not reused


# what quantize_cached records next to work_dir/int8
INT8_STAMP = "int8.source.json"


def ptq_cache_key(cfg: PTQDetConfig, fp32: ModelFiles) -> str:
    """What an INT8 model depends on: the FP32 model's bytes, every PTQ key, the layers kept in
    float (skip_tensor_list, skip_op_types) and the calibration images (TrainDataset)."""
    return fingerprint(fp32, {"ptq": cfg.ptq.to_dict(), "skip": cfg.skip_tensor_list,
                              "skip_types": cfg.skip_op_types,
                              "calibration": dataset_digest(cfg, ("TrainDataset",))})


def quantize_cached(cfg: PTQDetConfig, fp32: ModelFiles, work_dir: Path, progress: bool = True,
                    log: Callable[[str], None] = print) -> tuple[dict[str, Any], bool]:
    """PTQ of cfg's model into work_dir/int8 unless the same FP32 model and PTQ settings made it
    already (work_dir/INT8_STAMP holds their fingerprint). Returns the stamp (key, source, PTQ
    seconds of the run that made the model, layers quantized; callers may add what they measure
    on the model and write it back) and whether it quantized now."""
    from .quantize import quantize

    int8_dir = work_dir / "int8"
    stamp = work_dir / INT8_STAMP
    key = ptq_cache_key(cfg, fp32)
    if (int8_dir / "model.pdmodel").is_file():
        saved = read_cache_json(stamp, "the PTQ cache stamp") or {}  # damaged: a warning, then PTQ again
        if saved.get("key") == key:
            log(f"reusing {int8_dir} (same FP32 model and PTQ settings)")
            return saved, False
    log(f"quantizing {fp32.model_dir} -> {int8_dir} (PTQ section of {cfg.path})")
    start = time.perf_counter()
    result = quantize(cfg, int8_dir, progress=progress)
    saved = {"key": key, "fp32": str(fp32.model_dir), "config": str(cfg.path),
             "seconds": time.perf_counter() - start, "quantized": len(result.quantized_layers)}
    write_json(stamp, saved)
    return saved, True


def prepare_models(cfg: PTQDetConfig, work_dir: Path, need_onnx: bool, progress: bool = True,
                   log: Callable[[str], None] = print) -> ModelSet:
    """FP32 files, the INT8 model (quantized again only when the FP32 model or PTQ settings
    changed) and, when ONNX backends are asked for, fresh ONNX exports of both."""
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    _, quantized_now = quantize_cached(cfg, fp32, work_dir, progress, log)
    int8 = resolve_model_files(work_dir / "int8")
    onnx: dict[str, Path | str] = {}
    if need_onnx:
        for precision, files in (("FP32", fp32), ("INT8", int8)):
            try:
                onnx[precision] = export_onnx(files, work_dir / f"onnx_{precision.lower()}").onnx_path.parent
            except ExportError as exc:
                onnx[precision] = str(exc)
                log(f"ONNX export of the {precision} model failed: {exc}")
    return ModelSet(fp32, int8, onnx, quantized_now)


def _variants(models: ModelSet, backend: str, settings: BenchSettings) -> list[tuple[Row, BackendOptions, Path | None]]:
    """(row, options, model) per runner of one backend; model None = cannot run (row.error set)."""
    base = BackendOptions(threads=settings.threads)
    out: list[tuple[Row, BackendOptions, Path | None]] = []
    specs = [("FP32", "f32", True), ("INT8", "f32", True)]
    if backend == "openvino" and settings.openvino_bf16:
        # bf16: the float model a CPU with native bf16 would run, and the INT8 model with its
        # remaining float ops (activations, head, NMS inputs) in bf16
        specs.insert(1, ("FP32 (bf16)", "bf16", True))
        specs.append(("INT8 (bf16)", "bf16", True))
    if backend == "openvino" and settings.openvino_nms_after and _nms_cut(models):
        specs += [("FP32 (NMS after)", "f32", False), ("INT8 (NMS after)", "f32", False)]
    for precision, ov_precision, nms_inside in specs:
        key = precision.split()[0]
        options = BackendOptions(threads=base.threads, openvino_precision=ov_precision, openvino_nms=nms_inside)
        baseline = "FP32" if nms_inside else "FP32 (NMS after)"
        if backend == "paddle":
            model: Path | str = (models.fp32 if key == "FP32" else models.int8).model_dir
        else:
            model = models.onnx.get(key, "ONNX export not made")
        if isinstance(model, Path):
            out.append((Row(backend, precision, str(model), baseline=baseline), options, model))
        else:
            out.append((Row(backend, precision, "-", baseline=baseline, error=f"not supported: {model}"),
                        options, None))
    return out


def _nms_cut(models: ModelSet) -> bool:
    """Whether the FP32 ONNX export was cut before the model's NMS."""
    fp32 = models.onnx.get("FP32")
    return isinstance(fp32, Path) and load_export(fp32).nms is not None


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"not supported: {type(exc).__name__}: {text[:300]}"


def interleaved_rounds(runners: list[tuple[Row, Any]], feed: dict[str, np.ndarray], settings: BenchSettings,
                       warmup: bool = True) -> None:
    """settings.rounds rounds of settings.repeats timed runs per runner, the order reversed every
    other round (no runner always goes first); times appended to each row. warmup: first
    settings.warmup untimed runs per runner."""
    for _, runner in runners if warmup else ():
        for _ in range(settings.warmup):
            runner.run(feed)
    rounds = range(settings.rounds)
    if settings.progress:
        from tqdm import tqdm
        rounds = tqdm(rounds, desc=f"latency {runners[0][0].backend if runners else ''}", unit="round", leave=False)
    for r in rounds:
        order = runners if r % 2 == 0 else runners[::-1]
        for row, runner in order:
            for _ in range(settings.repeats):
                start = time.perf_counter()
                runner.run(feed)
                row.times_ms.append((time.perf_counter() - start) * 1000)


def bench_backend(cfg: PTQDetConfig, models: ModelSet, backend: str, feed: dict[str, np.ndarray],
                  settings: BenchSettings, source: Any = None, measure_map: bool = True) -> list[Row]:
    """Interleaved latency rounds, then (measure_map) the mAP, of every runner of one backend."""
    runners: list[tuple[Row, Any]] = []
    rows: list[Row] = []
    for row, options, model in _variants(models, backend, settings):
        rows.append(row)
        if model is None:
            continue
        try:
            runner = open_backend(backend, model, options)
            for _ in range(settings.warmup):
                runner.run(feed)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot compile/run the model is a row, not a crash
            row.error = _short_error(exc)
            continue
        row.runtime = runner.mode
        runners.append((row, runner))
    interleaved_rounds(runners, feed, settings, warmup=False)
    for row, runner in runners if measure_map else ():
        try:
            row.map = evaluate(runner, cfg, settings.dataset_key, source=source, progress=settings.progress,
                               desc=f"mAP {backend} {row.precision}").map
        except Exception as exc:  # noqa: BLE001 - keep the latency, say why there is no mAP
            row.error = _short_error(exc)
    return rows


@dataclass
class BenchResult:
    title: str
    rows: list[Row]
    settings: BenchSettings
    verdict: str

    def table(self) -> str:
        by_key = {(r.backend, r.precision): r for r in self.rows}
        paddle = {p: by_key.get(("paddle", p)) for p in ("FP32", "INT8")}
        table_rows = []
        for r in self.rows:
            fp32 = by_key.get((r.backend, r.baseline))
            ratio = (r.median / fp32.median) if r.median and fp32 and fp32.median and r is not fp32 else None
            ref = paddle.get(r.precision.split()[0])
            delta = (mAP_points(r.map) - mAP_points(ref.map)) if r.map is not None and ref and ref.map is not None \
                else None
            spread = r.spread()
            table_rows.append([self.title, r.backend, r.precision, r.runtime or "-",
                               round(r.median, 1) if r.median else None,
                               f"{spread[0]:.1f}-{spread[1]:.1f}" if spread else None,
                               f"{ratio:.2f}" if ratio else None,
                               f"{mAP_points(r.map):.1f}" if r.map is not None else None,
                               f"{delta:+.1f}" if delta is not None else None, r.error or "ok"])
        headers = ["model", "backend", "precision", "runtime", "latency ms (median)", "p10-p90 ms",
                   "ratio to FP32 (same backend)", "mAP", "mAP - Paddle same precision", "status"]
        return markdown_table(headers, table_rows)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "verdict": self.verdict,
                "settings": {k: v for k, v in self.settings.__dict__.items() if k != "progress"},
                "rows": [{"backend": r.backend, "precision": r.precision, "ratio_to": r.baseline, "model": r.model,
                          "runtime": r.runtime,
                          "median_ms": r.median, "spread_ms": r.spread(), "runs": len(r.times_ms),
                          "map": r.map, "error": r.error} for r in self.rows]}


def verdict(rows: list[Row], goal_ratio: float | None) -> str:
    """The best backend: fastest INT8 whose mAP is within MAP_TOLERANCE of Paddle INT8."""
    by_key = {(r.backend, r.precision): r for r in rows}
    ref = by_key.get(("paddle", "INT8"))
    candidates = []
    for r in rows:
        fp32 = by_key.get((r.backend, "FP32"))
        if r.precision != "INT8" or not r.median or r.map is None or not fp32 or not fp32.median:
            continue
        agrees = (ref is not None and ref.map is not None
                  and abs(mAP_points(r.map) - mAP_points(ref.map)) <= MAP_TOLERANCE)
        candidates.append((r.median, r, r.median / fp32.median, agrees))
    good = [c for c in candidates if c[3]]
    if not good:
        return "no INT8 row runs with an mAP within 1.0 point of Paddle INT8"
    _, best, ratio, _ = min(good, key=lambda c: c[0])
    text = f"best backend: {best.backend} INT8 {best.median:.1f} ms, INT8/FP32 {ratio:.2f}"
    if goal_ratio is not None:
        text += f" (goal <= {goal_ratio}: {'met' if ratio <= goal_ratio else 'NOT met'})"
    return text


def run_benchmark(cfg: PTQDetConfig, work_dir: Path, settings: BenchSettings, title: str | None = None,
                  log: Callable[[str], None] = print) -> BenchResult:
    from .data import build_source, latency_feed

    for backend in settings.backends:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    title = title or cfg.path.stem
    models = prepare_models(cfg, work_dir, need_onnx=any(b != "paddle" for b in settings.backends),
                            progress=settings.progress, log=log)
    feed = latency_feed(cfg, settings.dataset_key)
    source = build_source(cfg, settings.dataset_key)
    rows: list[Row] = []
    for backend in settings.backends:
        log(f"{title}: {backend}")
        rows += bench_backend(cfg, models, backend, feed, settings, source=source)
    result = BenchResult(title, rows, settings, verdict(rows, settings.goal_ratio))
    write_json(work_dir / "benchmark.json", result.to_dict())
    return result


def measure_models(cfg: PTQDetConfig, models: dict[str, Path | ModelFiles], backend: str, threads: int,
                   feed: dict[str, np.ndarray], progress: bool, rounds: int = PAIRED_ROUNDS) -> dict[str, Row]:
    """Latency rows of named models on `backend`, batch 1: `rounds` rounds of one run per model
    (order reversed every other round), so that the i-th times of two models were taken side by
    side: a machine shared with other work slows them alike (paired_saving)."""
    feed = {k: v[:1] for k, v in feed.items()}
    settings = BenchSettings(backends=(backend,), threads=threads, progress=progress, rounds=rounds, repeats=1)
    runners = []
    for name, path in models.items():
        row = Row(backend, name, str(getattr(path, "model_dir", path)))
        runner = open_backend(backend, path, BackendOptions(threads=threads))
        row.runtime = runner.mode
        runners.append((row, runner))
    interleaved_rounds(runners, feed, settings)
    return {row.precision: row for row, _ in runners}
