"""Bad input: one clear error naming the key or path, exit code 2, nothing written."""
import subprocess
import sys

import pytest

from conftest import ROOT, write_config


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize("script", ["post_quant.py", "eval.py", "analysis.py"])
def test_help_explains_flags(script):
    r = _run(script, "--help")
    assert r.returncode == 0
    assert "--config_path" in r.stdout and "--devices" in r.stdout


CASES = {
    "unknown key": ("modell_dir: x\n", "unknown config key 'modell_dir'"),
    "missing model": ("model_dir: /nonexistent/model\n", "model_dir does not exist: /nonexistent/model"),
    "missing dataset": ("TrainDataset:\n  !COCODataSet\n    image_dir: nowhere\n    anno_path: a.json\n"
                        "    dataset_dir: dataset/none\n", "TrainDataset.image_dir does not exist: dataset/none/nowhere"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_post_quant_bad_input(tmp_path, case):
    extra, message = CASES[case]
    cfg = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_ptq.yaml']\n" + extra)
    out = tmp_path / "out"
    r = _run("post_quant.py", "--config_path", str(cfg), "--save_dir", str(out))
    assert r.returncode == 2, r.stderr[-1500:]
    assert message in r.stderr
    assert r.stderr.strip().count("\n") == 0  # one line, no traceback
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_save_dir_equal_to_model_dir_is_refused(tmp_path):
    before = sorted(p.name for p in (ROOT / "demo/models/picodet_s_shapes").iterdir())
    r = _run("post_quant.py", "--config_path", "configs/demo/picodet_s_ptq.yaml", "--save_dir",
             "demo/models/picodet_s_shapes")
    assert r.returncode == 2 and "save_dir" in r.stderr and "model_dir" in r.stderr
    assert sorted(p.name for p in (ROOT / "demo/models/picodet_s_shapes").iterdir()) == before


def test_target_above_fp32_is_refused_before_calibration(tmp_path):
    cfg = write_config(tmp_path, "_BASE_: ['@DEMO@/picodet_s_analysis.yaml']\n"
                                 f"save_dir: {tmp_path / 'ana'}\ntarget_metric: 0.99\n")
    r = _run("analysis.py", "--config_path", str(cfg), "--quiet")
    assert r.returncode == 2
    assert "above the FP32 model's mAP" in r.stderr
    assert not list((tmp_path / "ana").rglob("calibrated"))
