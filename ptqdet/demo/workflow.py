"""`make demo`'s workflow on the embedded demo (tools/run_demo.py is its command line).

For both demo models: FP32 eval -> PTQ -> INT8 eval (mAP and CPU latency on Paddle Inference,
and FP32/INT8 latency on OpenVINO in alternation); for PicoDet-s also analysis -> analyzed
PTQ -> eval. Every model is quantized in QDQ form, so Paddle and OpenVINO run the same model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.deploy import deploy_form, qdq_config
from ..analysis.stages import AnalysisOptions, analyze
from ..backends import open_backend
from ..benchmark import measure_models
from ..config import PTQDetConfig, load_config
from ..data import latency_feed
from ..files import resolve_model_files
from ..metrics import evaluate
from ..model import BackendOptions, measure_latency
from ..quantize import quantize
from ..report import mAP_points, markdown_table

MODELS = [("PP-YOLOE-s", "ppyoloe_s"), ("PicoDet-s", "picodet_s")]
HEADERS = ["model", "strategy", "input", "mAP (val)", "CPU FP32 ms", "CPU INT8 ms", "runtime", "OpenVINO FP32 ms",
           "OpenVINO INT8 ms", "OpenVINO INT8/FP32", "recommended runtime"]


@dataclass
class DemoOptions:
    out: Path = Path("outputs")
    threads: int | None = None  # Paddle Inference threads (evaluation and its latency)
    rank_modes: tuple[str, ...] = ("quantize",)
    proxy_batches: int = 0
    deploy_threads: int = 1  # OpenVINO latency threads


@dataclass
class DemoResult:
    rows: list[list[Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        return markdown_table(HEADERS, self.rows)


def measure_paddle(cfg: PTQDetConfig, model_dir: Path, threads: int | None) -> tuple[float, float, str]:
    """mAP on the val split and batch-1 latency of one and the same Paddle Inference predictor."""
    predictor = open_backend("paddle", resolve_model_files(model_dir), BackendOptions(threads=threads))
    result = evaluate(predictor, cfg, "EvalDataset", desc=f"eval {model_dir.name}")
    latency = measure_latency(predictor, latency_feed(cfg))
    return result.map, latency["median_ms"], predictor.mode


def openvino_latency(cfg: PTQDetConfig, fp32_dir: Path, int8_dir: Path | None, exports: Path, threads: int
                     ) -> tuple[float, float | None, str]:
    """OpenVINO latency (ms) of the FP32 model and of an INT8 model (QDQ ONNX exports under
    `exports`), in the same interleaved rounds, batch 1; and the runtime's name."""
    models = {"FP32": deploy_form(resolve_model_files(fp32_dir), "openvino", exports / "fp32")}
    if int8_dir is not None:
        models["INT8"] = deploy_form(resolve_model_files(int8_dir), "openvino", exports / "int8")
    rows = measure_models(cfg, models, "openvino", threads, latency_feed(cfg), progress=True)
    int8 = rows.get("INT8")
    return rows["FP32"].median, int8.median if int8 else None, (int8 or rows["FP32"]).runtime.split(" (")[0]


def _openvino_cells(fp_ov: float, q_ov: float | None) -> list[Any]:
    return [round(fp_ov, 1), round(q_ov, 1) if q_ov else None, f"{q_ov / fp_ov:.2f}" if q_ov else None]


def target_note(result: Any) -> str:
    """The analysis' target model in one sentence: held-out mAP, runtime parity, latency ratio."""
    t = result.target
    if t is None:
        return ""
    acc = t.accuracy_only
    return (f"Target model ({t.selection} selection, returned: {t.chosen}): {t.num_skipped} layers in float, "
            f"held-out mAP {100 * t.verified_map:.1f} simulated / {100 * t.deployed_map:.1f} on {t.deployed_runtime} "
            f"(target {100 * t.heldout_target:.1f}: {'met' if t.met else 'NOT met'}), INT8/FP32 "
            f"{t.ratio:.2f} on {result.deploy.backend} ({result.deploy.threads} thread(s), measured by the analysis)"
            + (f"; the accuracy-only choice: {acc.num_float} layers in float, INT8/FP32 {acc.ratio:.2f}"
               if acc is not None and acc.ratio else "") + ".")


def model_rows(title: str, name: str, opts: DemoOptions, demo: DemoResult) -> tuple[PTQDetConfig, float, str]:
    """FP32 and PTQ rows of one demo model; returns its config, FP32 Paddle latency and input size."""
    cfg = qdq_config(load_config(f"configs/demo/{name}_ptq.yaml"))
    size = cfg.ppdet["EvalReader"]["sample_transforms"][1]["Resize"]["target_size"]
    size = f"{size[0]}x{size[1]}"
    print(f"\n== {title}: FP32 evaluation", flush=True)
    fp_map, fp_ms, fp_mode = measure_paddle(cfg, cfg.model_dir, opts.threads)
    print(f"== {title}: PTQ ({cfg.ptq.algo})", flush=True)
    out = opts.out / f"{name}_ptq"
    quantize(cfg, out)
    q_map, q_ms, q_mode = measure_paddle(cfg, out, opts.threads)
    fp_ov, q_ov, ov_mode = openvino_latency(cfg, cfg.model_dir, out, opts.out / "onnx" / name, opts.deploy_threads)
    demo.rows.append([title, "FP32 (base model)", size, mAP_points(fp_map), round(fp_ms, 1), None, fp_mode,
                      *_openvino_cells(fp_ov, None), ov_mode])
    demo.rows.append([title, f"PTQ ({cfg.ptq.algo}, all layers)", size, mAP_points(q_map), round(fp_ms, 1),
                      round(q_ms, 1), q_mode, *_openvino_cells(fp_ov, q_ov), ov_mode])
    demo.records.append({"model": title, "fp32_map": fp_map, "int8_map": q_map, "fp32_ms": fp_ms, "int8_ms": q_ms,
                         "openvino_fp32_ms": fp_ov, "openvino_int8_ms": q_ov})
    return cfg, fp_ms, size


def analysis_rows(title: str, name: str, cfg: PTQDetConfig, fp_ms: float, size: str, opts: DemoOptions,
                  demo: DemoResult) -> None:
    """Analysis -> analyzed PTQ -> eval of one demo model: its row and a note on the analysis."""
    print(f"== {title}: analysis", flush=True)
    result = analyze(load_config(f"configs/demo/{name}_analysis.yaml"),
                     AnalysisOptions(save_dir=opts.out / f"{name}_analysis", threads=opts.threads,
                                     rank_modes=opts.rank_modes, proxy_batches=opts.proxy_batches,
                                     deploy_threads=opts.deploy_threads))
    analyzed_cfg = qdq_config(load_config(result.files["analyzed_config"]))
    floats = len(analyzed_cfg.skip_tensor_list)
    print(f"== {title}: PTQ with {floats} layers in float", flush=True)
    out = opts.out / f"{name}_analyzed_ptq"
    quantize(analyzed_cfg, out)
    a_map, a_ms, a_mode = measure_paddle(analyzed_cfg, out, opts.threads)
    fp_ov, a_ov, ov_mode = openvino_latency(analyzed_cfg, cfg.model_dir, out, opts.out / "onnx" / f"{name}_analyzed",
                                            opts.deploy_threads)
    demo.rows.append([title, f"PTQ after analysis ({floats} layers in float)", size, mAP_points(a_map),
                      round(fp_ms, 1), round(a_ms, 1), a_mode, *_openvino_cells(fp_ov, a_ov), ov_mode])
    rho = ", ".join(f"{m} {v:.2f}" for m, v in result.spearman.items())
    c = result.counters
    demo.notes.append(f"Analysis of {title}: {len(result.ranking)} layers ranked ({','.join(opts.rank_modes)}), "
                      f"{c.calibrations} calibrations, {c.full_evaluations} full and {c.fast_evaluations} fast "
                      f"evaluations, {c.seconds.get('total', 0):.0f} s; "
                      + (f"Spearman rank correlation of the SQNR proxy with the mAP ranking: {rho}. " if rho
                         else "No proxy ranking (off by default: docs/analysis.md). ") + target_note(result))
    demo.records.append({"model": title, "analyzed_map": a_map, "analyzed_ms": a_ms, "analyzed_openvino_ms": a_ov,
                         "openvino_fp32_ms_same_rounds": fp_ov, "skip": analyzed_cfg.skip_tensor_list,
                         "analysis": result.counters.__dict__})


def run_demo(opts: DemoOptions) -> DemoResult:
    """The whole workflow (run from the repository: the demo configs name paths relative to it)."""
    start = time.time()
    demo = DemoResult()
    for title, name in MODELS:
        cfg, fp_ms, size = model_rows(title, name, opts, demo)
        if name == "picodet_s":
            analysis_rows(title, name, cfg, fp_ms, size, opts, demo)
    demo.seconds = time.time() - start
    return demo


def demo_text(demo: DemoResult, opts: DemoOptions, machine: dict[str, Any]) -> str:
    """The Markdown report: the table, how each column was measured, the analysis notes."""
    return (f"# ptqdet demo benchmark\n\n{demo.table()}\n\n"
            f"mAP: COCO mAP@[.5:.95] (x100) on the demo shapes val split (200 images), on the runtime of the "
            f"`runtime` column. Latency: Paddle Inference {machine['paddle']}, batch 1, median of 30 runs after 5 "
            f"warm-up runs, {opts.threads or 'default'} threads; OpenVINO (the recommended CPU runtime: "
            f"docs/deployment.md), QDQ ONNX exports of the same models, batch 1, {opts.deploy_threads} thread(s), "
            f"FP32 and INT8 run in alternation (100 runs each after 10 warm-up runs, median), the ratio taken "
            f"within those runs; on {machine['cpu']} ({machine['cores']} cores), {machine['date']}. "
            f"Total time of `make demo` after set-up: {demo.seconds:.0f} s.\n"
            + "".join(f"\n{n}\n" for n in demo.notes))
