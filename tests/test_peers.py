"""Peer rows of the recovery benchmark: an OpenVINO IR in an export folder, NNCF's PTQ of the demo
PicoDet-s (in its own venv, `make nncf-venv`; .ci/run makes it)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import DEMO_CONFIGS, MODELS
from ptqdet.backends import BackendOptions, open_backend
from ptqdet.config import ConfigError, load_config
from ptqdet.data import latency_feed
from ptqdet.export import EXPORT_META, IR_FILE, ONNX_FILE, is_onnx_export, load_export


@pytest.fixture
def fp32_export(deploy_models):
    """The demo PicoDet-s' FP32 ONNX export, made once per test run (conftest)."""
    return load_export(deploy_models["picodet_s"][1].onnx["FP32"])


@pytest.mark.slow
def test_openvino_ir_in_an_export_folder_runs_like_the_onnx(fp32_export, tmp_path):
    import openvino as ov

    ir_dir = tmp_path / "ir"
    ir_dir.mkdir()
    ov.save_model(ov.Core().read_model(str(fp32_export.onnx_path)), str(ir_dir / IR_FILE), compress_to_fp16=False)
    shutil.copy(fp32_export.onnx_path.parent / EXPORT_META, ir_dir / EXPORT_META)
    assert is_onnx_export(ir_dir)
    ir = load_export(ir_dir)
    assert ir.onnx_path == ir_dir / IR_FILE and ir.nms == fp32_export.nms
    feed = latency_feed(load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml"))
    got = open_backend("openvino", ir_dir, BackendOptions(threads=1)).run(feed)
    want = open_backend("openvino", fp32_export.onnx_path.parent, BackendOptions(threads=1)).run(feed)
    assert len(got) == len(want) and got[0].shape == want[0].shape and len(got[0]) > 0
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    with pytest.raises(ConfigError, match="is an OpenVINO IR, not ONNX: run it with --backend openvino"):
        open_backend("onnxruntime", ir_dir)
    (ir_dir / IR_FILE).unlink()
    with pytest.raises(ConfigError, match=f"needs {ONNX_FILE} or {IR_FILE}"):
        load_export(ir_dir)


def test_calibration_arrays_are_the_ptq_images():
    from ptqdet.peers import calibration_arrays

    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    cfg = dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, batch_size=2, batch_nums=3))
    arrays = calibration_arrays(cfg)
    assert set(arrays) == set(cfg.feed_names.values())
    assert all(len(a) == 6 for a in arrays.values())
    assert arrays["image"].shape[1:] == (3, 256, 256) and np.isfinite(arrays["image"]).all()
    assert len({arrays["image"][i].tobytes() for i in range(6)}) == 6  # six different images


def test_nncf_preset_and_venv_errors(tmp_path):
    """Refused before any work (the export folder is not even read)."""
    from ptqdet.peers import nncf_quantize

    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    export = tmp_path / "onnx_fp32"
    with pytest.raises(ConfigError, match="NNCF preset 'fast' is not one of"):
        nncf_quantize(cfg, export, tmp_path / "n", "fast")
    with pytest.raises(ConfigError, match="make nncf-venv"):
        nncf_quantize(cfg, export, tmp_path / "n", "mixed", python=tmp_path / "no" / "python")


@pytest.mark.slow
def test_nncf_quantizes_the_demo_picodet_and_is_reused(fp32_export, tmp_path, monkeypatch):
    from ptqdet import peers

    if not peers.NNCF_PYTHON.is_file():
        pytest.skip(f"NNCF's venv is absent ({peers.NNCF_PYTHON}): make nncf-venv")
    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    cfg = dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, batch_size=4, batch_nums=2))
    out = tmp_path / "nncf_mixed"
    stamp = peers.nncf_quantize(cfg, fp32_export.onnx_path.parent, out, "mixed")
    assert stamp["images"] == 8 and stamp["preset"] == "mixed" and stamp["seconds"] > 0
    export = load_export(out)
    assert export.precision == "INT8" and export.onnx_path.name == IR_FILE
    assert json.loads((out / EXPORT_META).read_text())["qdq"].startswith("nncf ")
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / IR_FILE)).get_ops()}
    assert "FakeQuantize" in ops  # NNCF's INT8 form
    feed = latency_feed(cfg)
    boxes = open_backend("openvino", out, BackendOptions(threads=1)).run(feed)[0]
    assert boxes.ndim == 2 and boxes.shape[1] == 6 and np.isfinite(boxes).all()

    def no_run(*args, **kwargs):
        raise AssertionError("NNCF ran again although nothing changed")

    monkeypatch.setattr(subprocess, "run", no_run)
    assert peers.nncf_quantize(cfg, fp32_export.onnx_path.parent, out, "mixed")["key"] == stamp["key"]
    other = dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, batch_nums=1))
    with pytest.raises(AssertionError, match="NNCF ran again"):
        peers.nncf_quantize(other, fp32_export.onnx_path.parent, out, "mixed")  # other images: quantized again


@pytest.mark.slow
def test_nncf_row_is_measured_like_a_recipe(fp32_export, tmp_path, monkeypatch):
    from ptqdet import peers, recipe_bench

    if not peers.NNCF_PYTHON.is_file():
        pytest.skip(f"NNCF's venv is absent ({peers.NNCF_PYTHON}): make nncf-venv")
    monkeypatch.setattr(recipe_bench, "LATENCY_RUNS", 10)
    cfg = load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")
    cfg = dataclasses.replace(cfg, ptq=dataclasses.replace(cfg.ptq, batch_size=4, batch_nums=2))
    (name, make), = peers.nncf_peers(("performance",))
    row = make(cfg, tmp_path, 0.5, fp32_export.onnx_path.parent, [1], latency_feed(cfg), False)
    assert name == row.recipe
    assert row.error is None, row.error
    assert row.recipe == "NNCF performance" and row.sim_map is None and row.ptq_seconds > 0
    assert 0.0 < row.runtime_map < 1.0 and 0.0 < row.runtime_bf16_map < 1.0
    assert set(row.latency[1]) == {"FP32", "FP32 (bf16)", "INT8", "INT8 (bf16)"}
    assert all(ms > 0 for ms in row.latency[1].values()) and row.ratio(1, "FP32") > 0
    assert 0.0 < row.conv_ratio[1] < 5.0  # the IR's convolutions found under the FP32 export's Conv names
    assert all(ms > 0 for ms in row.outside_ms[1])  # FP32, INT8: the profile's other nodes
    assert set(row.nodes) == {"Reorder", "FakeQuantize"} and row.nodes["FakeQuantize"][0] == 0  # none in FP32
    stamp = json.loads((tmp_path / "nncf_performance" / peers.STAMP).read_text())
    assert stamp["runtime_map"] == row.runtime_map  # kept with the model, reused by the next run
    table = recipe_bench.recipes_table([row], [1])
    assert "| NNCF performance |" in table and "conv INT8/FP32 (1T)" in table
    assert "outside convs ms FP32 / INT8 (1T)" in table and "FakeQuantize nodes FP32 / INT8" in table


def _crash(*args) -> float:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    return 0.0


def test_a_runtime_crash_while_scoring_is_retried_then_an_error(capfd):
    from ptqdet.recipe_bench import map_in_child

    with pytest.raises(RuntimeError, match=r"openvino crashed 2 times scoring .*model \(bf16\)"):
        map_in_child(DEMO_CONFIGS / "picodet_s_ptq.yaml", MODELS / "model", BackendOptions(openvino_precision="bf16"),
                     progress=False, score=_crash)
    err = capfd.readouterr().err
    assert "attempt 1 of 2" in err and "attempt 2 of 2" in err
