from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")

# isort: off
import PIL.Image  # noqa: E402,F401 - before paddle: after it, Pillow's PNG encoder segfaults (zlib symbols)
import paddle  # noqa: E402,F401 - paddle before pycocotools/ppdet (see requirements.txt)
# isort: on

DEMO_DATA = ROOT / "dataset" / "shapes"
MODELS = ROOT / "demo" / "models"
DEMO_CONFIGS = ROOT / "configs" / "demo"


@pytest.fixture(scope="session", autouse=True)
def _chdir_and_data():
    """Configs name paths relative to the repository; the demo dataset must exist."""
    os.chdir(ROOT)
    from filelock import FileLock

    from ptqdet.demo.shapes import EVAL_SPLITS, generate, is_complete

    DEMO_DATA.parent.mkdir(exist_ok=True)
    with FileLock(DEMO_DATA.parent / ".shapes.lock"):  # two xdist workers: one generates, one waits
        if not is_complete(DEMO_DATA, EVAL_SPLITS):  # what the tests read (make data-eval): no training image
            generate(DEMO_DATA, EVAL_SPLITS, progress=False)
    yield


DEPLOY_CONFIGS = {"picodet_s": "picodet_s_ptq_deploy.yaml", "ppyoloe_s": "ppyoloe_s_ptq_deploy.yaml"}


@pytest.fixture(scope="session")
def deploy_models(tmp_path_factory):
    """Per demo model, made once per test run and shared by every test file: (config, ModelSet,
    work folder) with its INT8 model in QDQ form (PTQ with the deploy config's section) and the
    ONNX exports of FP32 and INT8, as the deployment benchmark makes them (benchmark.prepare_models;
    a benchmark run on the same work folder reuses them: same cache key)."""
    from filelock import FileLock

    from ptqdet.benchmark import prepare_models
    from ptqdet.config import load_config

    root = run_shared_dir(tmp_path_factory, "deploy")
    out = {}
    with FileLock(root / ".lock"):  # one xdist worker builds them, the other then finds them cached
        for name, config in DEPLOY_CONFIGS.items():
            cfg = load_config(DEMO_CONFIGS / config)
            out[name] = (cfg, prepare_models(cfg, root / name, need_onnx=True, progress=False, log=lambda _: None),
                         root / name)
    return out


def run_shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder of this test run that every pytest-xdist worker sees (each worker's own base
    folder is a child of the run's): for what session fixtures build once for all workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    folder.mkdir(exist_ok=True)
    return folder


# `make test` runs two pytest-xdist workers with --dist loadgroup: every test file is one group
# (one worker runs it, its module fixtures built once); files that start Ray clusters share a
# group (one cluster at a time), and so do those that lay out dataset/coco_mini. Groups are handed
# out in this order, the longest first, so that neither worker ends with a long group alone.
XDIST_GROUP_OF = {"test_parallel": "ray", "test_ray_auth": "ray", "test_recipe_search": "ray",
                  "test_kary_search": "ray", "test_client": "real", "test_real_model": "real"}
XDIST_LONGEST_FIRST = ("test_analysis", "ray", "test_coverage", "real", "test_signals", "test_backends",
                       "test_pipeline", "test_recovery", "test_fast_passes", "test_quiet", "test_peers")


def _xdist_group(item) -> str:
    stem = Path(item.fspath).stem
    return XDIST_GROUP_OF.get(stem, stem)


def pytest_itemcollected(item):
    # as each test is collected: xdist reads the groups in its own pytest_collection_modifyitems,
    # which ran before this conftest's (tryfirst notwithstanding)
    item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = _xdist_group(item)
        return XDIST_LONGEST_FIRST.index(name) if name in XDIST_LONGEST_FIRST else len(XDIST_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the tests of a file keep their order


@pytest.fixture
def pico_cfg():
    from ptqdet.config import load_config
    return load_config(DEMO_CONFIGS / "picodet_s_ptq.yaml")


@pytest.fixture
def yoloe_cfg():
    from ptqdet.config import load_config
    return load_config(DEMO_CONFIGS / "ppyoloe_s_ptq.yaml")


def lean_skip_list(every: int = 8) -> str:
    """A skip_tensor_list (YAML) that leaves part of the demo PicoDet-s' 98 layers quantized: the
    first (most sensitive) six, then every `every`-th (8: 18 layers, 2: 52). For end-to-end
    analysis tests whose assertions do not depend on the number of layers ranked."""
    from ptqdet.files import resolve_model_files
    from ptqdet.quantize import layer_weights

    layers = layer_weights(resolve_model_files(MODELS / "picodet_s_shapes"), ["conv2d", "depthwise_conv2d"])
    keep = set(layers[:6] + layers[6::every])
    return "skip_tensor_list:\n" + "".join(f"  - {name}\n" for name in layers if name not in keep)


def write_config(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    """A config in tmp_path whose _BASE_ may name the demo configs by absolute path."""
    path = tmp_path / name
    path.write_text(text.replace("@DEMO@", str(DEMO_CONFIGS)))
    return path


def coco_slice(split: str, out_dir: Path, count: int, boxes: bool = True) -> Path:
    """The first `count` images of a demo split copied to out_dir/<split>/ with their COCO
    json (out_dir/<split>.json; boxes=False: images and categories only). Returns the json."""
    import json
    import shutil

    coco = json.loads((DEMO_DATA / "annotations" / f"instances_{split}.json").read_text())
    coco["images"] = coco["images"][:count]
    keep = {im["id"] for im in coco["images"]}
    if boxes:
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    else:
        del coco["annotations"]
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    for im in coco["images"]:
        shutil.copy2(DEMO_DATA / split / im["file_name"], out_dir / split / im["file_name"])
    anno = out_dir / f"{split}.json"
    anno.write_text(json.dumps(coco))
    return anno


def run_script(script: str, argv: list[str], capfd) -> tuple[int, str, str]:
    """A script's main through ptqdet.cli.run in this process: (exit code, stdout, stderr)."""
    import importlib.util

    from ptqdet import cli

    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import logging
    import warnings

    capfd.readouterr()
    disabled, showwarning = logging.root.manager.disable, warnings.showwarning
    # library handlers keep the stream they were made with (pytest's, at import): point them at
    # the captured stderr meanwhile, so that every line a library logs is seen (stdout ones too)
    handlers = [h for logger in [logging.root, *logging.root.manager.loggerDict.values()]
                for h in getattr(logger, "handlers", []) if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:  # not setStream: it flushes the old stream, which may be closed
        handler.stream = sys.stderr
    try:
        code = cli.run(module.main, [str(a) for a in argv])
    finally:  # --quiet silences logging and warnings process-wide: not for the next tests
        logging.disable(disabled)
        warnings.showwarning = showwarning
        for handler, stream in zip(handlers, streams):
            handler.stream = stream
    out, err = capfd.readouterr()
    return code, out, err


def write_voc(out_dir: Path, count: int, split: str = "val") -> Path:
    """The first `count` images of a demo split as a Pascal VOC dataset in out_dir: JPEGImages/,
    Annotations/*.xml, label_list.txt (class names in COCO category-id order, which is the
    model's class order) and <split>.txt (the file list). Returns out_dir."""
    import json
    import shutil
    from xml.etree import ElementTree as ET

    coco = json.loads((DEMO_DATA / "annotations" / f"instances_{split}.json").read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in categories}
    (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out_dir / "Annotations").mkdir(exist_ok=True)
    (out_dir / "label_list.txt").write_text("".join(f"{c['name']}\n" for c in categories))
    lines = []
    for im in coco["images"][:count]:
        stem = Path(im["file_name"]).stem
        shutil.copy2(DEMO_DATA / split / im["file_name"], out_dir / "JPEGImages" / f"{stem}.jpg")
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{stem}.jpg"
        size = ET.SubElement(root, "size")
        for tag, value in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for ann in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = ann["bbox"]
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[ann["category_id"]]
            ET.SubElement(obj, "difficult").text = str(int(ann.get("iscrowd", 0)))
            box = ET.SubElement(obj, "bndbox")
            for tag, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(box, tag).text = f"{value:g}"
        ET.ElementTree(root).write(out_dir / "Annotations" / f"{stem}.xml")
        lines.append(f"JPEGImages/{stem}.jpg Annotations/{stem}.xml\n")
    (out_dir / f"{split}.txt").write_text("".join(lines))
    return out_dir
