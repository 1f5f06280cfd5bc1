"""The stages the scripts run: evaluate a model, quantize one, and report either."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import open_backend
from .config import ConfigError, PTQDetConfig
from .data import build_source, feed_from_batch
from .export import is_onnx_export, load_export
from .files import ModelFiles, check_output_dir, resolve_model_files
from .metrics import EvalResult, evaluate
from .model import BackendOptions, measure_latency
from .program import check_config_model, is_quantized
from .quantize import QuantizeResult, layer_weights, quantize
from .report import machine_info, mAP_points, markdown_table, write_json


@dataclass
class Report:
    table: str
    json_path: Path
    data: dict[str, Any]



def latency_feed(cfg: PTQDetConfig, dataset_key: str = "EvalDataset") -> dict:
    """One pre-processed image (batch 1) of the dataset, fed for latency runs."""
    source = build_source(cfg, dataset_key, batch_size=1)
    return feed_from_batch(next(source.batches(max_images=1)), cfg.feed_names)


def evaluate_model(cfg: PTQDetConfig, files: ModelFiles | Path, dataset_key: str = "EvalDataset", device: str = "cpu",
                   threads: int | None = None, mkldnn: bool = True, progress: bool = True,
                   benchmark: bool = False, repeats: int = 30, backend: str = "paddle",
                   options: BackendOptions | None = None) -> tuple[EvalResult, dict[str, float] | None]:
    """mAP (and latency) of a model on one backend. `files` may be an ONNX export folder
    (ONNX backends); `options` overrides device/threads/mkldnn."""
    options = options or BackendOptions(device=device, threads=threads, mkldnn=mkldnn)
    if isinstance(files, ModelFiles):
        runner = open_backend(backend, files.model_dir, options, files.model_filename, files.params_filename)
        name = files.model_dir.name
    else:
        runner = open_backend(backend, files, options)
        name = Path(files).name
    result = evaluate(runner, cfg, dataset_key, progress=progress, desc=f"eval {name} ({backend})")
    latency = measure_latency(runner, latency_feed(cfg, dataset_key), repeats=repeats) if benchmark else None
    if latency is not None:
        latency["runtime"] = runner.mode
    return result, latency


def evaluate_and_report(cfg: PTQDetConfig, model_dir: Path | None = None, dataset_key: str = "EvalDataset",
                        device: str = "cpu", threads: int | None = None, benchmark: bool = False, repeats: int = 30,
                        mkldnn: bool = True, output: Path | None = None, progress: bool = True,
                        backend: str = "paddle", openvino_precision: str = "f32",
                        tensorrt: str | None = None) -> Report:
    options = BackendOptions(device=device, threads=threads, mkldnn=mkldnn, openvino_precision=openvino_precision,
                             tensorrt=tensorrt)
    target = Path(model_dir) if model_dir is not None else cfg.model_dir
    suffix = "" if backend == "paddle" else f"_{backend}"
    json_path = output or Path("outputs/eval") / f"{target.name}{suffix}.json"
    if json_path.is_dir():
        raise ConfigError(f"output {json_path} is a folder; give a JSON file path")
    check_output_dir(json_path.parent, None, key="output folder", replaced=False)
    if is_onnx_export(target):
        model: ModelFiles | Path = target
        precision = load_export(target).precision
    else:
        model = resolve_model_files(target, cfg.model_filename, cfg.params_filename)
        check_config_model(cfg, model)
        precision = "INT8" if is_quantized(model) else "FP32"
    result, latency = evaluate_model(cfg, model, dataset_key, progress=progress, benchmark=benchmark,
                                     repeats=repeats, backend=backend, options=options)
    row = [str(target), backend, precision, result.dataset, result.images, mAP_points(result.map),
           mAP_points(result.stats.get("mAP50")), latency["median_ms"] if latency else None]
    table = markdown_table(["model", "backend", "precision", "dataset", "images", "mAP", "mAP50", "latency ms (bs1)"],
                           [row])
    data = {"config": str(cfg.path), "model_dir": str(target), "backend": backend, "precision": precision,
            "device": device, "eval": result.to_dict(), "latency": latency, "machine": machine_info()}
    write_json(json_path, data)
    return Report(table, json_path, data)


def quantize_and_report(cfg: PTQDetConfig, save_dir: Path, device: str = "cpu", algo: str | None = None,
                        evaluate: bool = False, threads: int | None = None, progress: bool = True) -> Report:
    result: QuantizeResult = quantize(cfg, save_dir, device=device, algo=algo, progress=progress)
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    total = len(layer_weights(fp32, result.settings["quantizable_op_type"]))
    rows = [["layers quantized", f"{len(result.quantized_layers)} / {total}"],
            ["layers kept in float (skip_tensor_list)", len(result.skipped)],
            ["algo", result.settings["algo"]],
            ["weights / activations",
             f"{result.settings['weight_quantize_type']} / {result.settings['activation_quantize_type']}"],
            ["calibration images", f"{result.settings['batch_size']} x {result.settings['batch_nums']} (at most)"],
            ["PTQ time", f"{result.seconds:.1f} s"]]
    data: dict[str, Any] = {"config": str(cfg.path), "model_dir": str(cfg.model_dir), "save_dir": str(save_dir),
                            "ptq": result.settings, "skip_tensor_list": result.skipped,
                            "quantized_layers": result.quantized_layers, "seconds": round(result.seconds, 2),
                            "machine": machine_info()}
    if evaluate:
        fp_result, _ = evaluate_model(cfg, fp32, device=device, threads=threads, progress=progress)
        q_result, _ = evaluate_model(cfg, ModelFiles(Path(save_dir), "model.pdmodel", "model.pdiparams"),
                                     device=device, threads=threads, progress=progress)
        rows += [["FP32 mAP", mAP_points(fp_result.map)], ["INT8 mAP", mAP_points(q_result.map)]]
        data["eval"] = {"fp32": fp_result.to_dict(), "int8": q_result.to_dict()}
    json_path = Path(save_dir) / "ptq_report.json"
    write_json(json_path, data)
    return Report(markdown_table(["post-training quantization", "value"], rows), json_path, data)
