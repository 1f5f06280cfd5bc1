from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")

import paddle  # noqa: E402,F401 - paddle before pycocotools/ppdet (see requirements.txt)

DEMO_DATA = ROOT / "dataset" / "shapes"
MODELS = ROOT / "demo" / "models"
DEMO_CONFIGS = ROOT / "configs" / "demo"


@pytest.fixture(scope="session", autouse=True)
def _chdir_and_data():
    """Configs name paths relative to the repository; the demo dataset must exist."""
    os.chdir(ROOT)
    from ptqdet.demo.shapes import generate, is_complete

    if not is_complete(DEMO_DATA):
        generate(DEMO_DATA, progress=False)
    yield


@pytest.fixture
def pico_cfg():
    from ptqdet.config import load_config
    return load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")


@pytest.fixture
def yoloe_cfg():
    from ptqdet.config import load_config
    return load_config(DEMO_CONFIGS / "ppyoloe_s_ptq.yaml")


def write_config(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    """A config in tmp_path whose _BASE_ may name the demo configs by absolute path."""
    path = tmp_path / name
    path.write_text(text.replace("@DEMO@", str(DEMO_CONFIGS)))
    return path
