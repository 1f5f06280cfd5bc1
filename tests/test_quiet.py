"""--quiet: nothing on stderr from Paddle's or paddleslim's loggers, warnings or native passes.

Run as subprocesses: in process, library log handlers hold pytest's own stderr object and
their lines escape capfd."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DEMO_CONFIGS, ROOT, coco_slice


def _run(script: str, argv: list) -> tuple[int, str, str]:
    r = subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    return r.returncode, r.stdout, r.stderr

pytestmark = pytest.mark.slow


def test_every_script_is_silent_under_quiet(tmp_path):
    coco_slice("calib", tmp_path / "data", 2)
    coco_slice("val", tmp_path / "data", 2)
    data = tmp_path / "data"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_BASE_: ['{DEMO_CONFIGS / 'picodet_s_ptq.yaml'}']\n"
                   f"TrainDataset: !COCODataSet {{image_dir: calib, anno_path: calib.json, dataset_dir: {data}}}\n"
                   f"EvalDataset: !COCODataSet {{image_dir: val, anno_path: val.json, dataset_dir: {data}}}\n"
                   "PTQ:\n  batch_size: 2\n  batch_nums: 1\n  onnx_format: True\n")
    int8 = tmp_path / "int8"
    # paddleslim loads the model the old way: paddle.static.io logs a deprecation warning
    code, out, err = _run("post_quant.py", ["--config_path", cfg, "--save_dir", int8, "--quiet"])
    assert (code, err) == (0, "")
    assert "layers quantized" in out
    # oneDNN INT8 passes print ~30 "---    quantized ... ops" lines from C++
    code, out, err = _run("eval.py", ["--config_path", cfg, "--model_dir", int8, "--output",
                                            tmp_path / "eval.json", "--quiet"])
    assert (code, err) == (0, "")
    assert "INT8" in out and "quantized" not in out
    code, out, err = _run("export_onnx.py", ["--model_dir", int8, "--save_dir", tmp_path / "onnx", "--quiet"])
    assert (code, err) == (0, "")
    assert "INT8 ONNX model" in out
