"""Peer tools on the same model, data and runtime: OpenVINO's own PTQ (NNCF) beside ptqdet's.

The recovery benchmark (tools/bench_recovery.py --nncf) quantizes ptqdet's FP32 ONNX export
with NNCF's `nncf.quantize` (default settings, a preset), calibrated on the images ptqdet's PTQ
calibrates on (the config's TrainDataset, batch_size x batch_nums of the PTQ section), and
measures the result like every recipe: mAP on OpenVINO (f32 and bf16) with ptqdet's pre- and
post-processing, latency against FP32 and bf16. NNCF needs numpy 2 (Paddle 2.6: numpy < 1.24),
so it runs in its own venv (`make nncf-venv`) through ptqdet/nncf_script.py (run by its path, so
that nothing of ptqdet is imported there); the IR it writes
sits in an export folder (model.xml + export.json, ptqdet.export.IR_FILE) that runs on OpenVINO.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .benchmark import ModelSet
from .config import ConfigError, PTQDetConfig
from .data import build_source, feed_from_batch
from .export import EXPORT_META, IR_FILE, ONNX_FILE, POST_PROCESS_DIR
from .files import read_cache_json, resolve_model_files
from .paddle_static import replace_dir
from .recipe_bench import PeerRow, RecipeRow, measure_latency, measure_maps, model_name
from .report import write_json

ROOT = Path(__file__).resolve().parents[1]
NNCF_SCRIPT = Path(__file__).with_name("nncf_script.py")
NNCF_PYTHON = ROOT / ".venv-nncf" / "bin" / "python"
NNCF_PRESETS = ("performance", "mixed")
STAMP = "nncf.source.json"


def calibration_arrays(cfg: PTQDetConfig) -> dict[str, np.ndarray]:
    """The images ptqdet's PTQ calibrates on (TrainDataset's first batch_size x batch_nums), one
    array per model input, images on axis 0."""
    source = build_source(cfg, "TrainDataset", batch_size=1, images_only=True)
    total = min(len(source), cfg.ptq.batch_size * cfg.ptq.batch_nums)
    feeds = [feed_from_batch(b, cfg.feed_names) for b in source.batches(max_images=total)]
    if not feeds:
        raise ConfigError(f"{cfg.path}: TrainDataset has no image that can be decoded")
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def nncf_peers(presets: tuple[str, ...], python: Path = NNCF_PYTHON) -> list[tuple[str, PeerRow]]:
    """recipe_bench.run_recipes' peer rows for these NNCF presets."""
    return [(f"NNCF {preset}", functools.partial(nncf_row, preset=preset, python=python)) for preset in presets]


def _digest(fp32_export: Path, calibration: dict[str, np.ndarray], preset: str) -> str:
    h = hashlib.sha256((fp32_export / ONNX_FILE).read_bytes())
    for name in sorted(calibration):
        h.update(name.encode())
        h.update(np.ascontiguousarray(calibration[name]).tobytes())
    h.update(preset.encode())
    h.update(NNCF_SCRIPT.read_bytes())
    return h.hexdigest()


def nncf_quantize(cfg: PTQDetConfig, fp32_export: Path, out_dir: Path, preset: str,
                  python: Path = NNCF_PYTHON) -> dict:
    """NNCF's INT8 IR of the FP32 export into out_dir (an export folder), reused while the FP32
    export, the calibration images, the preset and the script are the same. Returns its stamp
    (seconds, versions, and the mAPs measured on it so far)."""
    if preset not in NNCF_PRESETS:
        raise ConfigError(f"NNCF preset {preset!r} is not one of {NNCF_PRESETS}")
    if not Path(python).is_file():
        raise ConfigError(f"NNCF rows need NNCF in its own venv: {python} is missing (make nncf-venv)")
    meta = json.loads((fp32_export / EXPORT_META).read_text())
    # the ONNX model's own inputs: a post-process left in Paddle takes im_shape / scale_factor,
    # the ONNX model (all NNCF sees) does not, and OpenVINO's reshape refuses a name it lacks
    calibration = {name: array for name, array in calibration_arrays(cfg).items() if name in meta["input_names"]}
    key = _digest(fp32_export, calibration, preset)
    stamp_path = out_dir / STAMP
    stamp = read_cache_json(stamp_path, "NNCF's model stamp") if (out_dir / IR_FILE).is_file() else None
    if stamp is not None and stamp.get("key") == key:
        return stamp
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        tmp_dir = Path(tmp) / "model"
        tmp_dir.mkdir()
        np.savez(Path(tmp) / "calibration.npz", **calibration)
        done = subprocess.run([str(python), str(NNCF_SCRIPT), str(fp32_export / ONNX_FILE),
                               str(Path(tmp) / "calibration.npz"), str(tmp_dir / IR_FILE), "--preset", preset],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split()[-60:])
            raise RuntimeError(f"NNCF ({preset}) failed on {fp32_export / ONNX_FILE}, exit {done.returncode}: {tail}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        if (fp32_export / POST_PROCESS_DIR).is_dir():  # NNCF's IR runs before the same Paddle post-process
            shutil.copytree(fp32_export / POST_PROCESS_DIR, tmp_dir / POST_PROCESS_DIR)
        meta.update(onnx_path=IR_FILE, precision="INT8", qdq=f"nncf {info['nncf']} {preset}",
                    quantized_layers=None, qdq_format=None)
        write_json(tmp_dir / EXPORT_META, meta)
        stamp = {"key": key, "config": str(cfg.path), **info}
        write_json(tmp_dir / STAMP, stamp)
        replace_dir(tmp_dir, out_dir)
    return stamp


def nncf_row(cfg: PTQDetConfig, work_dir: Path, fp32_map: float, fp32_export: Path, threads: list[int],
             feed: dict, progress: bool = True, *, preset: str, python: Path = NNCF_PYTHON) -> RecipeRow:
    """One NNCF preset on one model, measured like a recipe row (no simulated mAP: NNCF's model
    exists only as an OpenVINO IR; layers in float: not counted)."""
    row = RecipeRow(model_name(cfg), f"NNCF {preset}", fp32_map=fp32_map)
    out_dir = work_dir / f"nncf_{preset}"
    try:
        stamp = nncf_quantize(cfg, fp32_export, out_dir, preset, python)
        row.ptq_seconds = stamp["seconds"]
        measure_maps(cfg, row, out_dir, stamp, out_dir / STAMP, progress)
    except (RuntimeError, ValueError, OSError) as exc:
        row.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return row
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    # ModelSet's Paddle INT8 files serve only the paddle backend, which this row does not time:
    # NNCF's model exists as the IR alone
    measure_latency(cfg, row, ModelSet(fp32, fp32, {"FP32": fp32_export, "INT8": out_dir}), threads, feed, progress)
    return row
