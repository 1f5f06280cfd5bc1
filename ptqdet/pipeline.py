"""The stages the scripts run: evaluate a model, quantize one (and deploy it), and report either.

Each entry point takes the config and one small typed request: `EvalRequest` (what to
evaluate, on which runtime, how) and `QuantizeRequest` (where the INT8 model goes, what to
measure after it, on which runtime it is deployed).
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, open_backend, require
from .benchmark import measure_models
from .config import ConfigError, PTQDetConfig
from .data import check_dataset, latency_feed
from .export import export_onnx, is_onnx_export, load_export
from .files import ModelFiles, check_output_dir, resolve_model_files
from .metrics import EvalResult, evaluate
from .model import BackendOptions, measure_latency
from .program import check_config_model, is_quantized
from .quantize import SAVED_FILES, QuantizeResult, layer_weights, quantize
from .report import atomic_write_text, machine_info, mAP_points, markdown_table, write_json

RECOMMENDED_RUNTIME = "openvino"
DEPLOY_ROUNDS = 60  # --deploy latency: paired runs per model (FP32 and INT8 in alternation)
DEPLOY_FORM = {"openvino": "openvino", "onnxruntime": "onnx"}  # save_dir/<folder> of the runtime form


@dataclass
class Report:
    table: str
    json_path: Path
    data: dict[str, Any]


@dataclass
class EvalRequest:
    """One model on one runtime: a Paddle model (folder or files) or an ONNX export folder."""

    model: ModelFiles | Path
    backend: str = "paddle"
    options: BackendOptions = field(default_factory=BackendOptions)
    dataset_key: str = "EvalDataset"
    benchmark: bool = False  # also latency: batch 1, median of `repeats` runs after warm-up
    repeats: int = 30
    progress: bool = True


@dataclass
class QuantizeRequest:
    """post_quant.py: the INT8 model to write, and what to measure and deploy after it."""

    save_dir: Path
    algo: str | None = None  # overrides PTQ.algo
    evaluate: bool = False  # FP32 and INT8 mAP (and latency) on EvalDataset
    deploy: str | None = None  # runtime: writes its form of the INT8 model; --eval measures there
    deploy_threads: int = 1  # latency threads on the deploy runtime
    options: BackendOptions = field(default_factory=BackendOptions)  # device, threads of the evaluations
    progress: bool = True


@dataclass
class Evaluation:
    result: EvalResult
    latency: dict[str, float] | None  # with EvalRequest.benchmark
    runtime: str  # the runner's own name for how it ran the model (e.g. "oneDNN INT8")


def evaluate_model(cfg: PTQDetConfig, request: EvalRequest) -> Evaluation:
    """mAP (and, with request.benchmark, latency) of one model on one runtime."""
    runner = open_backend(request.backend, request.model, request.options)
    model_dir = request.model.model_dir if isinstance(request.model, ModelFiles) else Path(request.model)
    result = evaluate(runner, cfg, request.dataset_key, progress=request.progress,
                      desc=f"eval {model_dir.name} ({request.backend})")
    latency = None
    if request.benchmark:
        latency = measure_latency(runner, latency_feed(cfg, request.dataset_key), repeats=request.repeats)
        latency["runtime"] = runner.mode
    return Evaluation(result, latency, runner.mode)


def resolve_target(cfg: PTQDetConfig, model_dir: Path | None) -> tuple[ModelFiles | Path, str]:
    """The model eval.py evaluates (--model_dir, else the config's) and its precision; checked."""
    target = Path(model_dir) if model_dir is not None else cfg.model_dir
    if is_onnx_export(target):
        return target, load_export(target).precision
    files = resolve_model_files(target, cfg.model_filename, cfg.params_filename)
    check_config_model(cfg, files)
    return files, "INT8" if is_quantized(files) else "FP32"


def evaluate_and_report(cfg: PTQDetConfig, request: EvalRequest, output: Path | None = None) -> Report:
    """eval.py: evaluate request.model, print a table naming the runtime, write a JSON report
    (default outputs/eval/<model folder>[_<backend>].json)."""
    target = request.model.model_dir if isinstance(request.model, ModelFiles) else Path(request.model)
    suffix = "" if request.backend == "paddle" else f"_{request.backend}"
    json_path = output or Path("outputs/eval") / f"{target.name}{suffix}.json"
    if json_path.is_dir():
        raise ConfigError(f"output {json_path} is a folder; give a JSON file path")
    check_output_dir(json_path.parent, None, key="output folder", replaced=False)
    model, precision = resolve_target(cfg, target)
    evaluation = evaluate_model(cfg, dataclasses.replace(request, model=model))
    result, latency, runtime = evaluation.result, evaluation.latency, evaluation.runtime
    row = [str(target), runtime, precision, result.dataset, result.images, mAP_points(result.map),
           mAP_points(result.stats.get("mAP50")), latency["median_ms"] if latency else None,
           f"{latency['p10_ms']:.1f}-{latency['p90_ms']:.1f}" if latency else None]
    table = markdown_table(["model", "runtime", "precision", "dataset", "images", "mAP", "mAP50",
                            "latency ms (bs1, median)", "p10-p90 ms"], [row])
    data = {"config": str(cfg.path), "model_dir": str(target), "backend": request.backend, "runtime": runtime,
            "precision": precision, "device": request.options.device, "threads": request.options.resolved_threads(),
            "eval": result.to_dict(), "latency": latency, "machine": machine_info()}
    write_json(json_path, data)
    return Report(table, json_path, data)


def check_quantize_request(cfg: PTQDetConfig, request: QuantizeRequest) -> None:
    """What post_quant.py's later steps need, checked before calibration (ConfigError, one line)."""
    if request.deploy is not None:
        if request.deploy not in BACKENDS:
            raise ConfigError(f"--deploy {request.deploy!r} is not one of {', '.join(BACKENDS)}")
        if request.deploy != "paddle":
            require(request.deploy, request.deploy)
            if not cfg.ptq.onnx_format:
                raise ConfigError(f"--deploy {request.deploy} needs the QDQ form: set PTQ.onnx_format: True in "
                                  f"{cfg.path} (as configs/template_ptq.yaml does)")
        if request.deploy_threads < 1:
            raise ConfigError(f"--deploy_threads ({request.deploy_threads}) must be at least 1")
    if request.evaluate:
        check_dataset(cfg, "EvalDataset")


def quantize_and_report(cfg: PTQDetConfig, request: QuantizeRequest) -> Report:
    """post_quant.py: PTQ into request.save_dir, its report, and with request.deploy the
    runtime form of the INT8 model (save_dir/openvino or save_dir/onnx); with request.evaluate
    FP32 and INT8 mAP and latency on that runtime (Paddle Inference without --deploy)."""
    check_quantize_request(cfg, request)
    result: QuantizeResult = quantize(cfg, request.save_dir, device=request.options.device, algo=request.algo,
                                      progress=request.progress)
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    int8 = ModelFiles(Path(request.save_dir), *SAVED_FILES)
    total = len(layer_weights(fp32, result.settings["quantizable_op_type"]))
    rows = [["layers quantized", f"{len(result.quantized_layers)} / {total}"],
            ["layers kept in float (skip_tensor_list)", len(result.skipped)],
            ["algo", result.settings["algo"]],
            ["weights / activations",
             f"{result.settings['weight_quantize_type']} / {result.settings['activation_quantize_type']}"],
            ["calibration images", f"{result.settings['batch_size']} x {result.settings['batch_nums']} (at most)"],
            ["PTQ time", f"{result.seconds:.1f} s"]]
    data: dict[str, Any] = {"config": str(cfg.path), "model_dir": str(cfg.model_dir),
                            "save_dir": str(request.save_dir), "ptq": result.settings,
                            "skip_tensor_list": result.skipped, "quantized_layers": result.quantized_layers,
                            "seconds": round(result.seconds, 2), "machine": machine_info()}
    table = markdown_table(["post-training quantization", "value"], rows)
    runtime = request.deploy or "paddle"
    forms: dict[str, ModelFiles | Path] = {"FP32": fp32, "INT8": int8}
    if request.deploy in DEPLOY_FORM:
        folder = request.save_dir / DEPLOY_FORM[request.deploy]
        forms["INT8"] = export_onnx(int8, folder, inside_model=True).onnx_path.parent
        data["runtime_form"] = str(forms["INT8"])
        table += f"\n\nINT8 model for {request.deploy}: {forms['INT8']}"
    if request.evaluate:
        summary, data["deploy"] = deploy_summary(cfg, request, runtime, forms)
        table += "\n\n" + summary
        atomic_write_text(request.save_dir / "deploy_report.md", summary + "\n")
    json_path = Path(request.save_dir) / "ptq_report.json"
    write_json(json_path, data)
    return Report(table, json_path, data)


def deploy_summary(cfg: PTQDetConfig, request: QuantizeRequest, runtime: str, forms: dict[str, ModelFiles | Path]
                   ) -> tuple[str, dict[str, Any]]:
    """FP32 and INT8 mAP on EvalDataset and batch-1 latency (in alternation, request.deploy_threads
    threads) on one runtime, every row naming the runtime; a note where INT8 is the slower."""
    with tempfile.TemporaryDirectory(prefix="ptqdet_fp32_") as tmp:
        if runtime in DEPLOY_FORM:  # the FP32 model in the same runtime form, for the comparison
            forms = {**forms, "FP32": export_onnx(forms["FP32"], Path(tmp) / "fp32").onnx_path.parent}
        maps = {}
        for precision, model in forms.items():
            eval_request = EvalRequest(model, runtime, request.options, progress=request.progress)
            maps[precision] = evaluate_model(cfg, eval_request).result.map
        rows = measure_models(cfg, forms, runtime, request.deploy_threads, latency_feed(cfg), request.progress,
                              rounds=DEPLOY_ROUNDS)
    fp32_ms, int8_ms = rows["FP32"].median, rows["INT8"].median
    table_rows, data = [], {"runtime": runtime, "threads": request.deploy_threads, "rows": []}
    for precision, row in rows.items():
        p10, p90 = row.spread()
        table_rows.append([precision, row.runtime, f"{mAP_points(maps[precision]):.1f}", f"{row.median:.2f}",
                           f"{p10:.2f}-{p90:.2f}", f"{row.median / fp32_ms:.2f}"])
        data["rows"].append({"precision": precision, "runtime": row.runtime, "map": maps[precision],
                             "median_ms": row.median, "spread_ms": [p10, p90], "model": str(forms[precision])})
    table = markdown_table(["model", "runtime", "mAP (EvalDataset)", f"latency ms (bs1, {request.deploy_threads} "
                            "thread(s), median)", "p10-p90 ms", "ratio to FP32"], table_rows)
    note = slower_note(runtime, int8_ms / fp32_ms)
    data["note"] = note
    return table + (f"\n\n{note}" if note else ""), data


def slower_note(runtime: str, ratio: float) -> str:
    """What to do when INT8 runs slower than FP32 on `runtime` (empty when it does not)."""
    if ratio < 1.0:
        return ""
    if runtime == RECOMMENDED_RUNTIME:
        return (f"note: INT8 is slower than FP32 on {runtime} here (INT8/FP32 {ratio:.2f}): this CPU gains "
                "nothing from its INT8 kernels for this model; keep the FP32 model, or compare with `make bench`")
    return (f"note: INT8 is slower than FP32 on {runtime} here (INT8/FP32 {ratio:.2f}); "
            f"OpenVINO runs INT8 faster than FP32: --deploy {RECOMMENDED_RUNTIME}")
