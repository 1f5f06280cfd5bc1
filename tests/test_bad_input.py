"""Bad input: one clear error naming the key or path, exit code 2, nothing written."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DEMO_CONFIGS, DEMO_DATA, MODELS, ROOT, coco_slice, run_script, write_config, write_voc
from ptqdet.config import PTQ_DEFAULTS


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
                        "    dataset_dir: dataset/none\n",
                        "TrainDataset.image_dir does not exist: dataset/none/nowhere"),
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


# --- the bad-input table: every script, in process, through ptqdet.cli.run ------------------

@dataclass(frozen=True)
class Good:
    """Good fixtures shared by the table: the demo PicoDet-s and small slices of the demo data."""

    root: Path
    model: Path
    data: Path
    classifier: Path  # an inference model that is not a detector


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Good:
    import paddle

    root = tmp_path_factory.mktemp("good")
    model = root / "model"
    shutil.copytree(MODELS / "picodet_s_shapes", model, ignore=shutil.ignore_patterns("*.md", "*.png"))
    data = root / "data"
    coco_slice("val", data, 4)
    coco_slice("calib", data, 4)
    classifier = root / "classifier"
    paddle.enable_static()
    try:
        with paddle.static.program_guard(paddle.static.Program(), paddle.static.Program()):
            x = paddle.static.data("x", [1, 8], "float32")
            y = paddle.static.nn.fc(x, 3)
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(paddle.static.default_startup_program())
            paddle.static.save_inference_model(str(classifier / "model"), [x], [y], exe)
    finally:
        paddle.disable_static()
    return Good(root, model, data, classifier)


@dataclass
class Env:
    """One case's folder: tmp (scratch, checked unchanged), out (must not appear) and the good fixtures."""

    tmp: Path
    good: Good
    patch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def model(self, corrupt: Callable[[Path], None] | None = None) -> Path:
        """A copy of the good model in tmp, changed by `corrupt`."""
        model = self.tmp / "model"
        shutil.copytree(self.good.model, model)
        if corrupt:
            corrupt(model)
        return model

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def config(self, extra: str = "", model: Path | None = None, base: str = "picodet_s_ptq.yaml",
               train: str = "", evaluation: str = "") -> Path:
        """A config on the good fixtures; `train`/`evaluation` replace a dataset's fields."""
        data = self.good.data
        train = train or f"image_dir: calib, anno_path: calib.json, dataset_dir: {data}"
        evaluation = evaluation or f"image_dir: val, anno_path: val.json, dataset_dir: {data}"
        return self.write("cfg.yaml", f"_BASE_: ['{DEMO_CONFIGS / base}']\nmodel_dir: {model or self.good.model}\n"
                                      f"TrainDataset: !COCODataSet {{{train}}}\n"
                                      f"EvalDataset: !COCODataSet {{{evaluation}}}\n"
                                      f"FastEvalDataset: !COCODataSet {{{evaluation}}}\n{extra}")

    def ptq(self, *args, **kw) -> list:
        return ["--config_path", self.config(*args, **kw), "--save_dir", self.out, "--quiet"]

    def eval(self, *args, **kw) -> list:
        return ["--config_path", self.config(*args, **kw), "--output", self.out / "eval.json", "--quiet"]

    def analysis(self, *args, **kw) -> list:
        return ["--config_path", self.config(*args, **kw), "--save_dir", self.out, "--quiet"]

    def onnx(self, model: Path) -> list:
        return ["--model_dir", model, "--save_dir", self.out]

    def anno(self, text: str) -> str:
        """Dataset fields of the good images with annotation file `text`."""
        return f"image_dir: val, anno_path: {self.write('bad.json', text)}, dataset_dir: {self.good.data}"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_image(env: Env) -> str:
    """The val slice copied, its first image replaced by bytes that are not an image."""
    data = env.tmp / "data"
    shutil.copytree(env.good.data, data)
    (data / "val" / "val_000000.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 20)
    return f"image_dir: val, anno_path: val.json, dataset_dir: {data}"


def _fake_quant_model(env: Env) -> Path:
    """An INT8 model of the good PicoDet-s in fake-quant form (PTQ.onnx_format: False), made
    once per module (1 calibration image, ~4 s) beside the good fixtures."""
    out = env.good.root / "int8_fake_quant"
    if not (out / "model.pdmodel").is_file():
        from ptqdet.config import load_config
        from ptqdet.quantize import quantize

        cfg = env.write("fq.yaml", f"_BASE_: ['{DEMO_CONFIGS / 'picodet_s_ptq.yaml'}']\nmodel_dir: {env.good.model}\n"
                                   f"TrainDataset: !COCODataSet {{image_dir: calib, anno_path: calib.json, "
                                   f"dataset_dir: {env.good.data}}}\n"
                                   "PTQ: {batch_size: 1, batch_nums: 1, algo: abs_max, equalize_depthwise: False}\n")
        quantize(load_config(cfg), out, progress=False)
        cfg.unlink()
    return out


def _export_folder(env: Env, meta: str | None = '{"precision": "FP32"}', model: str | None = "model.onnx") -> Path:
    """A folder shaped like an ONNX export of export_onnx.py: export.json holding `meta` (None:
    none) and a model file named `model` (None: none; its bytes are not a model)."""
    folder = env.tmp / "onnx"
    folder.mkdir()
    if meta is not None:
        (folder / "export.json").write_text(meta)
    if model is not None:
        (folder / model).write_bytes(b"not a model")
    return folder


def _export_meta(**change) -> str:
    meta = {"onnx_path": "model.onnx", "source": "m", "precision": "FP32", "input_names": ["image", "scale_factor"],
            "output_names": ["a", "b"], "nms": None, "opset": 13, "paddle2onnx": "1.3.1"}
    return json.dumps({**meta, **change})


def _pir_export(env: Env, stem: str = "model", paddlex: bool = False) -> Path:
    """A Paddle 3 / PaddleX 3 PIR export's shape: <stem>.json (the PIR program) + <stem>.pdiparams
    (+ PaddleX's inference.yml)."""
    folder = env.tmp / "pir"
    folder.mkdir()
    (folder / f"{stem}.json").write_text('{"base_code": {"magic": "pir", "trainable": false, "version": 1}, '
                                         '"program": {"regions": []}}')
    shutil.copy(env.good.model / "model.pdiparams", folder / f"{stem}.pdiparams")
    if paddlex:
        (folder / "inference.yml").write_text("Global:\n  model_name: PicoDet-S\n")
    return folder


def _without_package(env: Env, name: str, argv: list) -> list:
    """argv, with `import name` failing during the case (as when the package is not installed)."""
    env.patch.setitem(sys.modules, name, None)
    return argv


def _folder(env: Env, name: str) -> Path:
    folder = env.tmp / name
    folder.mkdir()
    return folder


def _base_chain(env: Env, texts: dict[str, str]) -> Path:
    """Config files named by `texts` (the first is the one given to the script)."""
    paths = [env.write(name, text) for name, text in texts.items()]
    return paths[0]


def _voc_without_xml(env: Env) -> Path:
    voc = write_voc(env.tmp / "voc", 2)
    next((voc / "Annotations").iterdir()).unlink()
    return voc


def _coco(**change) -> str:
    coco = json.loads((DEMO_DATA / "annotations" / "instances_val.json").read_text())
    coco["images"] = coco["images"][:4]
    coco.update(change)
    return json.dumps(coco)


_BAD_VALUE = {bool: "'yes'", int: "'8'", float: "high", str: "3", list: "conv2d"}


def _ptq_type_cases() -> dict:
    """One case per PTQ key: a value of the wrong type (from the type of its default)."""
    cases = {}
    for key, default in PTQ_DEFAULTS.items():
        kind = next((t for t in _BAD_VALUE if isinstance(default, t)), None)
        if kind is not None:
            cases[f"PTQ.{key} wrong type"] = ("post_quant.py", lambda e, k=key, v=_BAD_VALUE[kind]:
                                              e.ptq(f"PTQ:\n  {k}: {v}\n"), f"PTQ.{key}")
    return cases


# name: (script, argv builder, text the one error line must hold)
TABLE: dict[str, tuple[str, Callable[[Env], list], str]] = {
    # dataset files
    "annotation file missing": ("eval.py", lambda e: e.eval(evaluation=f"image_dir: val, anno_path: nope.json, "
                                                                      f"dataset_dir: {e.good.data}"),
                                "EvalDataset.anno_path does not exist"),
    "annotation file empty": ("eval.py", lambda e: e.eval(evaluation=e.anno("")), "EvalDataset.anno_path is empty"),
    "annotation file not JSON": ("post_quant.py", lambda e: e.ptq(train=e.anno("{images: [")),
                                 "TrainDataset.anno_path is not JSON"),
    "annotation file not COCO": ("eval.py", lambda e: e.eval(evaluation=e.anno("[1, 2, 3]")),
                                 "EvalDataset.anno_path is not a COCO annotation file"),
    "annotation file without images": ("post_quant.py", lambda e: e.ptq(train=e.anno(_coco(images=[]))),
                                       "TrainDataset.anno_path holds no images"),
    "annotation file without boxes (eval)": ("eval.py", lambda e: e.eval(evaluation=e.anno(_coco(annotations=None))),
                                             "EvalDataset.anno_path has no boxes"),
    "images that do not exist": ("eval.py", lambda e: e.eval(evaluation=e.anno(_coco(images=[
        {"id": 1, "file_name": "gone.jpg", "width": 10, "height": 10}]))), "gone.jpg"),
    "image folder missing": ("post_quant.py", lambda e: e.ptq(train=f"image_dir: nowhere, anno_path: calib.json, "
                                                                    f"dataset_dir: {e.good.data}"),
                             "TrainDataset.image_dir does not exist"),
    "EvalDataset folder missing with --eval": ("post_quant.py", lambda e: [*e.ptq(
        evaluation=f"image_dir: nowhere, anno_path: val.json, dataset_dir: {e.good.data}"), "--eval"],
        "EvalDataset.image_dir does not exist"),
    "--deploy openvino on a fake-quant config": ("post_quant.py", lambda e: [*e.ptq("PTQ: {onnx_format: False}\n"),
                                                                             "--deploy", "openvino"],
                                                 "PTQ.onnx_format: True"),
    "--deploy_threads 0": ("post_quant.py", lambda e: [*e.ptq(), "--deploy", "paddle", "--deploy_threads", "0"],
                           "--deploy_threads (0) must be at least 1"),
    "image folder missing (analysis)": ("analysis.py", lambda e: e.analysis(
        evaluation=f"image_dir: nowhere, anno_path: val.json, dataset_dir: {e.good.data}"),
        "EvalDataset.image_dir does not exist"),
    "image that cannot be decoded (eval)": ("eval.py", lambda e: e.eval(evaluation=_garbage_image(e)),
                                            "cannot be decoded: "),
    "image folder without boxes as EvalDataset": ("eval.py", lambda e: e.eval(
        f"EvalDataset: !ImageFolder {{image_dir: {e.good.data / 'val'}}}\n"),
        "EvalDataset: an ImageFolder has no boxes"),
    "VOC without label_list": ("eval.py", lambda e: e.eval(f"metric: VOC\nEvalDataset: !VOCDataSet {{dataset_dir: "
                                                           f"{write_voc(e.tmp / 'voc', 2)}, anno_path: val.txt}}\n"),
                               "EvalDataset.label_list is not set"),
    "VOC file list naming a missing XML": ("eval.py", lambda e: e.eval(
        f"metric: VOC\nEvalDataset: !VOCDataSet {{dataset_dir: {_voc_without_xml(e)}, anno_path: val.txt, "
        f"label_list: label_list.txt}}\n"), "refers to 1 file(s) that do not exist"),
    # model files
    "model_dir missing": ("post_quant.py", lambda e: e.ptq(model=e.tmp / "nope"), "model_dir does not exist"),
    "model file missing": ("eval.py", lambda e: e.eval(model=e.model(lambda m: (m / "model.pdmodel").unlink())),
                           "model file not found"),
    "program truncated": ("export_onnx.py", lambda e: e.onnx(e.model(lambda m: _truncate(m / "model.pdmodel"))),
                          "model file is not a Paddle program"),
    "params truncated": ("post_quant.py", lambda e: e.ptq(model=e.model(lambda m: _truncate(m / "model.pdiparams"))),
                         "params file is truncated or corrupt"),
    "params of another model": ("eval.py", lambda e: e.eval(model=e.model(lambda m: shutil.copy(
        MODELS / "ppyoloe_s_shapes" / "model.pdiparams", m / "model.pdiparams"))), "params file does not match"),
    "params corrupt": ("analysis.py", lambda e: e.analysis(model=e.model(lambda m: (m / "model.pdiparams").write_bytes(
        b"\x00" * 4 + b"\xff" * 4096))), "params file is truncated or corrupt"),
    "not a detector (post_quant)": ("post_quant.py", lambda e: e.ptq(model=e.good.classifier), "not a detector export"),
    "not a detector (export_onnx)": ("export_onnx.py", lambda e: e.onnx(e.good.classifier), "not a detector export"),
    "input_list names an input the model lacks": ("eval.py", lambda e: e.eval("input_list: [image, im_shape]\n"),
                                                  "input_list names ['im_shape']"),
    "input_list leaves a model input unfed": ("post_quant.py", lambda e: e.ptq("input_list: [image]\n"),
                                              "does not feed the model inputs ['scale_factor']"),
    "arch says no NMS but the model has one": ("eval.py", lambda e: e.eval("arch: PPYOLOE\n"),
                                               "arch: the model has NMS"),
    # output locations
    "save_dir cannot be created": ("post_quant.py", lambda e: ["--config_path", e.config(), "--save_dir",
                                                               e.write("file", "x") / "out"], "cannot be created"),
    "save_dir is a file": ("export_onnx.py", lambda e: ["--model_dir", e.good.model, "--save_dir", e.write("out", "x")],
                           "is a file"),
    "save_dir inside model_dir": ("post_quant.py", lambda e: ["--config_path", e.config(model=e.model()), "--save_dir",
                                                              e.tmp / "model" / "int8"], "is inside model_dir"),
    "save_dir is model_dir": ("analysis.py", lambda e: ["--config_path", e.config(model=e.model()), "--save_dir",
                                                        e.tmp / "model"], "is model_dir"),
    "save_dir holds model_dir": ("post_quant.py", lambda e: ["--config_path", e.config(model=e.model()), "--save_dir",
                                                             e.tmp], "holds model_dir"),
    "save_dir holds files that are not a model": ("post_quant.py", lambda e: [
        "--config_path", e.config(), "--save_dir", e.write("out/notes.txt", "mine").parent],
        "holds files that are not"),
    "analysis save_dir inside model_dir": ("analysis.py", lambda e: [
        "--config_path", e.config(model=e.model()), "--save_dir", e.tmp / "model" / "ana"], "is inside model_dir"),
    "image folder without images (calibration)": ("post_quant.py", lambda e: e.ptq(
        f"TrainDataset: !ImageFolder {{image_dir: {e.write('empty/notes.txt', 'x').parent}}}\n"),
        "TrainDataset.image_dir holds no images"),
    "eval --output is a folder": ("eval.py", lambda e: ["--config_path", e.config(), "--output",
                                                        e.write("out/x", "").parent], "is a folder"),
    # config values
    "config file missing": ("post_quant.py", lambda e: ["--config_path", e.tmp / "nope.yaml", "--save_dir", e.out],
                            "config file not found"),
    "config not YAML": ("eval.py", lambda e: ["--config_path", e.write("c.yaml", "a: [1\n"),
                                              "--output", e.out / "x.json"],
                        "not valid YAML"),
    "unknown key": ("post_quant.py", lambda e: e.ptq("modell_dir: x\n"), "unknown config key 'modell_dir'"),
    "unknown PTQ key": ("analysis.py", lambda e: e.analysis("PTQ:\n  batch_num: 3\n"), "unknown key 'PTQ.batch_num'"),
    "PTQ not a mapping": ("post_quant.py", lambda e: e.ptq("PTQ: [avg]\n"), "'PTQ' must be a mapping"),
    "PTQ.batch_nums zero": ("post_quant.py", lambda e: e.ptq("PTQ:\n  batch_nums: 0\n"), "PTQ.batch_nums"),
    "PTQ.hist_percent above 1": ("post_quant.py", lambda e: e.ptq("PTQ:\n  hist_percent: 1.5\n"), "PTQ.hist_percent"),
    "PTQ.algo unknown": ("post_quant.py", lambda e: e.ptq("PTQ:\n  algo: best\n"), "PTQ.algo 'best'"),
    "PTQ.weight_quantize_type unknown": ("post_quant.py", lambda e: e.ptq("PTQ:\n  weight_quantize_type: x\n"),
                                         "PTQ.weight_quantize_type"),
    "PTQ.activation_quantize_type unknown": ("post_quant.py", lambda e: e.ptq("PTQ:\n  activation_quantize_type: x\n"),
                                             "PTQ.activation_quantize_type"),
    "PTQ.round_type unknown": ("post_quant.py", lambda e: e.ptq("PTQ:\n  round_type: x\n"), "PTQ.round_type"),
    "--algo unknown": ("post_quant.py", lambda e: [*e.ptq(), "--algo", "best"], "--algo 'best'"),
    "NMS.score_threshold above 1": ("eval.py", lambda e: e.eval("NMS:\n  score_threshold: 2\n",
                                                                base="ppyoloe_s_ptq.yaml"), "NMS.score_threshold"),
    "num_classes zero": ("eval.py", lambda e: e.eval("num_classes: 0\n"), "num_classes"),
    "plot_hist not a bool": ("analysis.py", lambda e: e.analysis("plot_hist: maybe\n"), "plot_hist"),
    "target_metric out of range": ("analysis.py", lambda e: e.analysis("target_metric: 52\n"), "target_metric"),
    "NMS without arch PPYOLOE (conflict)": ("post_quant.py", lambda e: e.ptq("NMS:\n  keep_top_k: 100\n"),
                                            "NMS is only used with arch: PPYOLOE"),
    "skip_op_types not quantized (conflict)": ("post_quant.py", lambda e: e.ptq("skip_op_types: [matmul_v2]\n"),
                                               "skip_op_types ['matmul_v2']"),
    "metric VOC on a COCO dataset (conflict)": ("eval.py", lambda e: e.eval("metric: VOC\n"),
                                                "is a COCODataSet but metric is VOC"),
    # the deployment path: a runtime asked to run what it cannot
    "fake-quant INT8 on OpenVINO": ("eval.py", lambda e: [*e.eval(), "--backend", "openvino", "--model_dir",
                                                          _fake_quant_model(e)], "`PTQ.onnx_format: True`"),
    "fake-quant INT8 on ONNX Runtime": ("eval.py", lambda e: [*e.eval(), "--backend", "onnxruntime", "--model_dir",
                                                              _fake_quant_model(e)], "_ptq_deploy.yaml"),
    "fake-quant INT8 to ONNX": ("export_onnx.py", lambda e: ["--model_dir", _fake_quant_model(e), "--save_dir", e.out],
                                "`PTQ.onnx_format: True`"),
    "runtime not installed": ("eval.py", lambda e: _without_package(e, "openvino", [*e.eval(), "--backend",
                                                                                     "openvino"]),
                              "needs the Python package 'openvino'"),
    "ONNX export folder without model.onnx": ("eval.py", lambda e: [*e.eval(), "--backend", "openvino", "--model_dir",
                                                                    _export_folder(e, model=None)],
                                              "ONNX export of ptqdet (export.json) without its model"),
    "ONNX model without export.json": ("eval.py", lambda e: [*e.eval(), "--backend", "onnxruntime", "--model_dir",
                                                             _export_folder(e, meta=None)], "but no export.json"),
    "export.json truncated": ("eval.py", lambda e: [*e.eval(), "--backend", "onnxruntime", "--model_dir",
                                                    _export_folder(e, meta=_export_meta()[:40])],
                              "is truncated or not an export.json"),
    "ONNX export on the paddle backend": ("eval.py", lambda e: [*e.eval(), "--model_dir",
                                                                _export_folder(e, meta=_export_meta())],
                                          "backend 'paddle' runs Paddle models, not an ONNX export"),
    "OpenVINO IR on ONNX Runtime": ("eval.py", lambda e: [*e.eval(), "--backend", "onnxruntime", "--model_dir",
                                                          _export_folder(e, _export_meta(onnx_path="model.xml"),
                                                                         "model.xml")],
                                    "is an OpenVINO IR, not ONNX"),
    "OpenVINO on GPU": ("eval.py", lambda e: [*e.eval(), "--backend", "openvino", "--devices", "gpu"],
                        "runs on CPU here"),
    # what model_dir is, when it is not a Paddle 2 model folder
    "model_dir is a file": ("post_quant.py", lambda e: e.ptq(model=e.good.model / "model.pdmodel"),
                            "is a file, not a folder"),
    "Paddle 3 PIR export (model.json)": ("post_quant.py", lambda e: e.ptq(model=_pir_export(e)),
                                         "holds a Paddle 3 PIR program (model.json + model.pdiparams"),
    "PaddleX 3 PIR export (inference.json, analysis)": ("analysis.py", lambda e: e.analysis(
        "model_filename: inference.pdmodel\nparams_filename: inference.pdiparams\n",
        model=_pir_export(e, "inference", paddlex=True)), "FLAGS_enable_pir_api=0"),
    "model_filename names a PIR program": ("eval.py", lambda e: e.eval(
        "model_filename: inference.json\nparams_filename: inference.pdiparams\n",
        model=_pir_export(e, "inference", paddlex=True)), "Paddle 2.6 (the version PaddleSlim 2.6 needs) cannot"),
    "model_dir holds other file names": ("export_onnx.py", lambda e: e.onnx(e.model(lambda m: [
        (m / f"model.{x}").rename(m / f"inference.{x}") for x in ("pdmodel", "pdiparams")])),
        "the folder holds inference.pdmodel: set model_filename"),
    "model_dir empty": ("post_quant.py", lambda e: e.ptq(model=_folder(e, "empty_model")), "is empty"),
    # config structure
    "PTQ key at the top level": ("post_quant.py", lambda e: e.ptq("onnx_format: True\n"),
                                 "'onnx_format' at the top level: it is a setting of the PTQ section"),
    "NMS key at the top level": ("eval.py", lambda e: e.eval("keep_top_k: 100\n", base="ppyoloe_s_ptq.yaml"),
                                 "it is a setting of the NMS section"),
    "top-level key inside PTQ": ("analysis.py", lambda e: e.analysis("PTQ:\n  skip_tensor_list: []\n"),
                                 "skip_tensor_list is a top-level key, not a PTQ setting"),
    "_BASE_ cycle": ("post_quant.py", lambda e: ["--config_path", _base_chain(e, {
        "a.yaml": "_BASE_: ['b.yml']\n", "b.yml": "_BASE_: ['a.yaml']\n"}), "--save_dir", e.out],
        "_BASE_ cycle: "),
    "_BASE_ file missing": ("eval.py", lambda e: ["--config_path", _base_chain(e, {
        "a.yaml": "_BASE_: ['b.yml']\n", "b.yml": "_BASE_: ['gone/c.yml']\n"}), "--output", e.out / "x.json"],
        "_BASE_ file not found: "),
    "_BASE_ not a list": ("analysis.py", lambda e: ["--config_path", e.write("a.yaml", "_BASE_: b.yml\n"),
                                                    "--save_dir", e.out], "_BASE_ must be a list"),
    "_BASE_ file empty": ("post_quant.py", lambda e: ["--config_path", _base_chain(e, {
        "a.yaml": "_BASE_: ['b.yml']\n", "b.yml": ""}), "--save_dir", e.out], "is empty"),
    # output folders the system refuses (root passes os.access there)
    "save_dir under /proc": ("post_quant.py", lambda e: ["--config_path", e.config(), "--save_dir",
                                                          "/proc/ptqdet_out"], "cannot be created"),
    "analysis save_dir under /proc": ("analysis.py", lambda e: ["--config_path", e.config(), "--save_dir",
                                                                "/proc/ptqdet_ana"], "cannot be created"),
    "eval --output under /sys": ("eval.py", lambda e: ["--config_path", e.config(), "--output",
                                                        "/sys/ptqdet/eval.json"], "cannot be created"),
    **_ptq_type_cases(),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with its content hash: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_the_table_covers_every_script_and_class():
    assert len(TABLE) >= 35
    assert {script for script, _, _ in TABLE.values()} == {"post_quant.py", "eval.py", "analysis.py", "export_onnx.py"}
    assert {f"PTQ.{key} wrong type" for key in PTQ_DEFAULTS} <= set(TABLE)


@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input_gives_one_error_line_and_writes_nothing(tmp_path, good, capfd, monkeypatch, case):
    script, build, expected = TABLE[case]
    env = Env(tmp_path, good, monkeypatch)
    argv = build(env)
    before, good_before = _snapshot(tmp_path), _snapshot(good.root)
    code, out, err = run_script(script, argv, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert expected in lines[0]
    assert "Traceback" not in out + err
    assert _snapshot(tmp_path) == before  # no output folder, no temporary left, fixtures untouched
    assert not [p for p in env.out.parent.iterdir() if ".tmp" in p.name]
    assert _snapshot(good.root) == good_before  # the source model byte-identical


# --- damaged caches: one warning line, then the result is computed again ---------------------

DAMAGED = {"cut short": lambda text: text[: len(text) // 2], "not JSON": lambda text: "\x00\xff garbage",
           "not an object": lambda text: "[1, 2, 3]"}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_analysis_cache_is_reported_and_recomputed(tmp_path, capfd, damage):
    from ptqdet.analysis.context import AnalysisContext

    work = tmp_path / "ana" / ".work" / "key"
    work.mkdir(parents=True)
    good = json.dumps({"reference": {"fp32_full": 0.5, "int8_fast": 0.4}, "ranking": {"conv2d_1.w_0": 0.1}})
    (work / "results.json").write_text(DAMAGED[damage](good))
    capfd.readouterr()
    ctx = AnalysisContext.open(tmp_path / "ana", "key", progress=False)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: the analysis cache ") and "is damaged" in lines[0]
    assert str(work / "results.json") in lines[0]
    assert ctx.section("reference") == {}  # nothing trusted from it: recomputed
    ctx.section("reference")["fp32_full"] = 0.5
    ctx.save()
    assert json.loads((work / "results.json").read_text()) == {"reference": {"fp32_full": 0.5}}


def test_an_analysis_cache_section_that_is_not_a_mapping_is_dropped(tmp_path, capfd):
    from ptqdet.analysis.context import ResultCache

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"reference": [0.5], "ranking": {"a": 1.0}}))
    capfd.readouterr()
    cache = ResultCache(path)
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "damaged sections ['reference']" in err
    assert cache.get("ranking") == {"a": 1.0} and cache.get("reference") == {}


@pytest.mark.parametrize("damage", ["cut short", "not an object"])
def test_a_damaged_ptq_cache_stamp_is_reported_and_the_model_quantized_again(tmp_path, capfd, monkeypatch, pico_cfg,
                                                                              damage):
    import ptqdet.quantize
    from ptqdet.benchmark import INT8_STAMP, ptq_cache_key, quantize_cached
    from ptqdet.files import resolve_model_files
    from ptqdet.quantize import QuantizeResult

    fp32 = resolve_model_files(pico_cfg.model_dir)
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "model.pdmodel").write_bytes(b"an earlier INT8 model")
    key = ptq_cache_key(pico_cfg, fp32)
    (tmp_path / INT8_STAMP).write_text(DAMAGED[damage](json.dumps({"key": key, "seconds": 1.0, "quantized": 98})))
    calls = []
    monkeypatch.setattr(ptqdet.quantize, "quantize", lambda cfg, out, progress: calls.append(out) or QuantizeResult(
        out, 1.0, {}, quantized_layers=["conv2d_1.w_0"]))
    capfd.readouterr()
    stamp, quantized_now = quantize_cached(pico_cfg, fp32, tmp_path, progress=False, log=lambda _: None)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert quantized_now and calls == [tmp_path / "int8"]
    assert len(lines) == 1 and lines[0].startswith("warning: the PTQ cache stamp ") and "is damaged" in lines[0]
    assert json.loads((tmp_path / INT8_STAMP).read_text())["key"] == key == stamp["key"]
    # and the stamp written again is trusted: the next call reuses the model, silently
    assert quantize_cached(pico_cfg, fp32, tmp_path, progress=False, log=lambda _: None)[1] is False
    assert capfd.readouterr().err == "" and len(calls) == 1


def _raised_in(path: str, function: str, exc: Exception) -> Exception:
    """`exc` raised from a function `function` of a file at `path` (a traceback through it)."""
    namespace: dict = {}
    exec(compile(f"def {function}(exc):\n    raise exc\n", path, "exec"), namespace)  # noqa: S102
    try:
        namespace[function](exc)
    except Exception as raised:  # noqa: BLE001
        return raised
    raise AssertionError("not raised")


@pytest.mark.parametrize("path, args", [("one_pass_ptq", []), ("run_paddle_ptq", ["--algo", "hist"])])
def test_a_failure_inside_paddles_ptq_becomes_one_line_and_exit_2(tmp_path, monkeypatch, capfd, pico_cfg, path, args):
    """post_quant.py on an export Paddle's PTQ fails on (as RetinaNet's, YOLOF's and TOOD's did): one line naming
    Paddle's PTQ and its function, exit 2, no traceback, on the one-pass path (avg, abs_max) and
    on paddleslim's own sampling (the other algorithms); a failure elsewhere is not disguised."""
    import ptqdet.quantize
    from ptqdet.quantize import PADDLE_PTQ_FILE, ptq_error

    inside = _raised_in(f"/x/site-packages/{PADDLE_PTQ_FILE}", "_update_program",
                        ValueError("(InvalidArgument) Generated graph shouldn't contain cycle.\n  [Hint: ...]"))
    error = ptq_error(inside)
    assert "post-training quantization (_update_program)" in str(error) and "\n" not in str(error)
    assert "Generated graph shouldn't contain cycle" in str(error) and "FP32" in str(error)
    assert ptq_error(_raised_in("/x/ptqdet/elsewhere.py", "f", ValueError("a bug"))) is None

    def fails_inside(*args, **kwargs):
        raise inside

    monkeypatch.setattr(ptqdet.quantize, path, fails_inside)
    code, _, err = run_script("post_quant.py", ["--config_path", str(DEMO_CONFIGS / "picodet_s_ptq.yaml"),
                                                "--save_dir", str(tmp_path / "out"), "--quiet", *args], capfd)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: Paddle 2.6's post-training quantization (_update_program) failed")
    assert not (tmp_path / "out").exists()
