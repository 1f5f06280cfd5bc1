"""Architecture coverage: which PaddleDetection exports ptqdet loads, quantizes, evaluates,
exports and runs, stage by stage (docs/models.md, made from docs/results/models.json).

For each architecture of ARCHS, `run_arch` builds the randomly initialised model of its
PaddleDetection config (configs/coverage/<name>.yml), exports it as PaddleDetection's
tools/export_model.py does (cached under outputs/coverage/models/, keyed by the configs' bytes),
then runs the stages of STAGES with its ptqdet config (configs/coverage/<name>_ptq.yaml). A
stage is "ok", or the one line a user running the same step would get (a ConfigError's
message), or "skipped: ..." when a stage it needs failed.

An INT8 runtime is "ok" only when it agrees with the simulated INT8 model (Paddle Inference,
fake-quant ops on FP32 kernels): the simulated model's detections are the ground truth its
detections are scored against (COCO mAP >= MIN_AGREEMENT_MAP over >= MIN_BOXES boxes); a random
model that detects fewer boxes is compared on its raw outputs before NMS instead (cosine
similarity >= MIN_COSINE).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path("configs/coverage")
CACHE_DIR = Path("outputs/coverage")
RESULTS_JSON = Path("docs/results/models.json")
MODELS_MD = Path("docs/models.md")
EXPORT_RECIPE = 5  # bump when the way models are built or exported changes (cache key)

MIN_AGREEMENT_MAP = 0.9
MIN_BOXES = 50
MIN_COSINE = 0.99
GT_MIN_SCORE = 0.05  # the simulated model's detections taken as ground truth


@dataclass(frozen=True)
class Arch:
    name: str  # configs/coverage/<name>.yml (model) and <name>_ptq.yaml (ptqdet), unless config says
    title: str
    family: str  # one-stage anchor-free, anchor-based, two-stage, transformer...
    config: str | None = None  # model config stem when shared (PicoDet with and without NMS)
    exclude_nms: bool = False
    untie: bool = False  # spread the random model's tied scores before the export (untie_scores)

    @property
    def model_config(self) -> Path:
        return CONFIG_DIR / f"{self.config or self.name}.yml"

    @property
    def ptq_config(self) -> Path:
        return CONFIG_DIR / f"{self.name}_ptq.yaml"


ARCHS: tuple[Arch, ...] = (
    Arch("ppyoloe_plus_s", "PP-YOLOE+ (CSPResNet s, width 0.25)", "anchor-free"),
    Arch("ppyoloe_plus_s_exclude_nms", "PP-YOLOE+, exclude_nms export (as ptqdet's PP-YOLOE configs)",
         "anchor-free", config="ppyoloe_plus_s", exclude_nms=True),
    Arch("picodet_s", "PicoDet-s (LCNet x0.35)", "anchor-free"),
    Arch("picodet_s_exclude_nms", "PicoDet-s, exclude_nms export", "anchor-free", config="picodet_s",
         exclude_nms=True),
    Arch("yolov3_mbv3", "YOLOv3 (MobileNetV3-large x0.5)", "anchor-based", untie=True),
    Arch("ppyolo_tiny", "PP-YOLO-tiny (MobileNetV3 x0.5)", "anchor-based", untie=True),
    Arch("yolox_nano", "YOLOX-nano", "anchor-free"),
    Arch("fcos_r18", "FCOS (ResNet-18, FPN)", "anchor-free"),
    Arch("gfl_r18", "GFL (ResNet-18-vd, FPN)", "anchor-free"),
    Arch("tood_r18", "TOOD (ResNet-18, FPN)", "anchor-free"),
    Arch("tood_r18_noalign", "TOOD (ResNet-18, FPN), use_align_head: False", "anchor-free"),
    Arch("retinanet_r18", "RetinaNet (ResNet-18, FPN)", "anchor-based"),
    Arch("yolof_r18", "YOLOF (ResNet-18, dilated encoder)", "anchor-based"),
    Arch("faster_rcnn_r18_fpn", "Faster R-CNN (ResNet-18, FPN)", "two-stage"),
    Arch("ssdlite_mbv3_small", "SSDLite (MobileNetV3-small)", "anchor-based"),
    Arch("centernet_mbv3_small", "CenterNet (MobileNetV3-small)", "center-based"),
    Arch("pafnet_lite", "PAFNet-lite (TTFNet family, MobileNetV3)", "center-based"),
    Arch("detr_r18", "DETR (ResNet-18, 1+1 layers)", "transformer"),
    Arch("detr_r18_int8_matmul", "DETR, linear layers INT8 too (matmul_v2)", "transformer", config="detr_r18"),
    Arch("dino_r18", "DINO (ResNet-18, 1+1 layers)", "transformer"),
)
ARCH_BY_NAME = {a.name: a for a in ARCHS}

STAGES = ("export", "fp32", "ptq", "int8_sim", "onednn_int8", "onnx_export", "openvino_int8", "onnxruntime_int8")
STAGE_TITLES = {"export": "PaddleDetection export", "fp32": "load + FP32 eval", "ptq": "PTQ",
                "int8_sim": "simulated INT8", "onednn_int8": "Paddle oneDNN INT8", "onnx_export": "ONNX QDQ export",
                "openvino_int8": "OpenVINO INT8", "onnxruntime_int8": "ONNX Runtime INT8"}
NEEDS = {"fp32": "export", "ptq": "fp32", "int8_sim": "ptq", "onednn_int8": "int8_sim", "onnx_export": "int8_sim",
         "openvino_int8": "onnx_export", "onnxruntime_int8": "onnx_export"}
# op types worth naming in the matrix: what makes an export differ from PP-YOLOE/PicoDet
NOTABLE_OPS = ("multiclass_nms3", "matrix_nms", "yolo_box", "prior_box", "box_coder", "generate_proposals_v2",
               "distribute_fpn_proposals", "roi_align", "matmul_v2", "layer_norm", "softmax", "deformable_conv",
               "conv2d_transpose", "grid_sampler", "top_k_v2", "gather_nd", "where", "bilinear_interp_v2",
               "nearest_interp_v2", "group_norm")


# ---------------------------------------------------------------------------- errors

def one_line(exc: BaseException, stage: str) -> str:
    """The one line a stage's failure is reported with: a ConfigError's own message, else the
    exception's last meaningful line with where in PaddleDetection/Paddle it arose."""
    if isinstance(exc, ConfigError):
        text = str(exc)
    else:
        from .quantize import error_detail

        text = f"{STAGE_TITLES.get(stage, stage)} failed: {type(exc).__name__}: {error_detail(exc)}"
    text = " ".join(text.split())
    return text.replace("Traceback", "traceback")[:600]


def _ppdet_frame(exc: BaseException) -> str | None:
    """file:line and code of the innermost ppdet frame in exc's traceback (or its message:
    Paddle's dynamic-to-static errors carry the user code's frames as text)."""
    text = "".join(traceback.format_exception(exc))
    frames = re.findall(r'File "[^"]*site-packages/(ppdet/[^"]+)", line (\d+), in (\w+)', text)
    if not frames:
        return None
    path, line, func = frames[-1]
    return f"<site-packages>/{path}:{line} ({func})"


def export_error(exc: BaseException) -> ConfigError:
    """PaddleDetection's exporter failed: one line naming where and what the user can do."""
    where = _ppdet_frame(exc)
    message = str(exc)
    zero_d = ("rank of input is 0" in message or "range of [0, 0)" in message
              or "tuple index out of range" in message)
    if zero_d:
        return ConfigError(f"PaddleDetection 2.6 cannot export this model on Paddle 2.6: {where or 'its code'} "
                           "indexes or concatenates shape values that Paddle >= 2.5 makes 0-D tensors, which the "
                           "dynamic-to-static conversion refuses; export it with a PaddleDetection that handles 0-D "
                           "shapes (release/2.7 or later) or with Paddle 2.4, then quantize that export")
    return ConfigError(f"PaddleDetection's export failed at {where or 'an unknown place'}: {one_line(exc, 'export')}")


# ---------------------------------------------------------------------------- export (cached)

def _config_chain(path: Path) -> list[Path]:
    """The config and every _BASE_ file it names, recursively (the export's cache key)."""
    import yaml

    files, todo = [], [path]
    while todo:
        current = todo.pop()
        files.append(current)
        data = yaml.load(current.read_text(), Loader=yaml.BaseLoader) or {}
        bases = data.get("_BASE_", []) if isinstance(data, dict) else []
        todo.extend(current.parent / b for b in (bases if isinstance(bases, list) else [bases]))
    return files


def export_key(arch: Arch) -> str:
    import paddle
    import ppdet

    digest = hashlib.sha256()
    for file in _config_chain(arch.model_config):
        digest.update(str(file).encode() + b"\0" + file.read_bytes() + b"\0")
    digest.update(f"{arch.exclude_nms}|{paddle.__version__}|{ppdet.__version__}|{EXPORT_RECIPE}".encode())
    return digest.hexdigest()[:16]


def export_dir(arch: Arch, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / "models" / arch.name


def export_model(arch: Arch, cache_dir: Path = CACHE_DIR, refresh: bool = False) -> Path:
    """The PaddleDetection export of `arch` (random weights, paddle.seed(0)) in
    cache_dir/models/<name>/, made again only when its configs changed. A failed export is
    cached too (its one line). Raises ConfigError when the export fails."""
    out = export_dir(arch, cache_dir)
    key = export_key(arch)
    stamp = out / "coverage_key.json"
    if not refresh and stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if recorded.get("key") == key:
            if recorded.get("error"):
                raise ConfigError(recorded["error"])
            if (out / "model.pdmodel").is_file():
                return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    error = None
    with tempfile.TemporaryDirectory(prefix=f".{arch.name}.", dir=out.parent) as tmp:
        try:
            produced = _ppdet_export(arch, Path(tmp))
            os.replace(produced, out)
        except ConfigError as exc:
            error = str(exc)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key, "config": str(arch.model_config), "exclude_nms": arch.exclude_nms,
                                 "error": error}, indent=1) + "\n")
    if error:
        raise ConfigError(error)
    return out


UNTIE_WEIGHT_SCALE = 10.0
UNTIE_BIAS_STD = 1.0


def untie_scores(model: Any) -> int:
    """Spread a random model's scores: every convolution with a bias outside the backbone (the
    heads' prediction convolutions; the backbone's are MobileNetV3's squeeze-excitation ones, the
    other convolutions feed a BatchNorm) gets its weights x UNTIE_WEIGHT_SCALE and
    N(0, UNTIE_BIAS_STD) added to its bias (seeded). At PaddleDetection's initialisation a YOLO
    head (no score prior) scores thousands of boxes alike (~0.25 everywhere), and which of them
    NMS keeps is a tie-break no runtime comparison can judge. Heads with a score prior (FCOS,
    GFL, TTFNet, ...: every score ~0.01) detect nothing and are compared on their raw outputs;
    spread, their box regressions degenerate, so they are left as built (Arch.untie). Returns how
    many convolutions it changed."""
    import paddle

    rng = np.random.default_rng(0)
    changed = 0
    for name, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.Conv2D) and layer.bias is not None and name.split(".")[0] != "backbone":
            weight, bias = layer.weight.numpy(), layer.bias.numpy()
            layer.weight.set_value((weight * UNTIE_WEIGHT_SCALE).astype(weight.dtype))
            layer.bias.set_value((bias + rng.normal(0.0, UNTIE_BIAS_STD, bias.shape)).astype(bias.dtype))
            changed += 1
    return changed


def _ppdet_export(arch: Arch, tmp: Path) -> Path:
    """Trainer(cfg, mode='test').export(...), as tools/export_model.py; the folder it wrote."""
    os.environ.setdefault("ENABLE_FALL_BACK", "False")  # ppdet 2.6 export on paddle 2.6 needs it
    import paddle
    from ppdet.core.workspace import load_config, merge_config
    from ppdet.engine import Trainer

    from .config import _reset_ppdet_workspace
    from .stdout import quiet_stdout

    _reset_ppdet_workspace()
    paddle.set_device("cpu")
    paddle.seed(0)
    np.random.seed(0)
    try:
        with quiet_stdout():
            cfg = load_config(str(arch.model_config))
            merge_config({"filename": arch.name})
            if arch.exclude_nms:  # tools/export_model.py -o exclude_nms=True trt=True (PP-YOLOE's
                # switch) export.nms=False (PicoDet's)
                merge_config({"exclude_nms": True, "trt": True, "export": {"nms": False}})
            exporter = Trainer(cfg, mode="test")
            if arch.untie:
                untie_scores(exporter.model)
            exporter.export(str(tmp))
    except Exception as exc:  # noqa: BLE001 - any failure of the exporter is the stage's result
        raise export_error(exc) from exc
    finally:
        _reset_ppdet_workspace()
    return tmp / arch.name


# ---------------------------------------------------------------------------- running a runtime

EVAL_SLICE = CACHE_DIR / "data" / "instances_val16.json"  # configs/coverage/_base_/shapes_ptq.yml
EVAL_IMAGES = 16


def ensure_eval_slice(shapes: Path = Path("dataset/shapes"), out: Path = EVAL_SLICE, count: int = EVAL_IMAGES) -> Path:
    """The first `count` images of the demo val split and their boxes, as a COCO json (the
    coverage configs' EvalDataset; file names relative to dataset/shapes/val)."""
    source = shapes / "annotations" / "instances_val.json"
    if not source.is_file():
        raise ConfigError(f"{source} is missing: make the demo dataset first (make data)")
    coco = json.loads(source.read_text())
    coco["images"] = coco["images"][:count]
    keep = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    text = json.dumps(coco)
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return out


@dataclass
class Pass:
    """One runtime over the evaluation images: its mAP, detections and raw (pre-NMS) outputs."""

    runtime: str
    map: float
    detections: list[dict[str, np.ndarray]]
    raw: list[list[np.ndarray]]


@dataclass
class Data:
    cfg: Any  # PTQDetConfig
    source: Any  # BatchSource
    batches: list[dict[str, Any]]


def load_data(cfg) -> Data:
    from .data import build_source

    source = build_source(cfg, "EvalDataset")
    return Data(cfg, source, list(source.batches()))


def run_pass(runner, raw_runner: Callable[[dict[str, np.ndarray]], list[np.ndarray]], data: Data) -> Pass:
    """Detections and mAP of `runner`, and the raw outputs of `raw_runner` (same feed)."""
    from .data import feed_from_batch
    from .metrics import MetricSession, detect

    session = MetricSession(data.cfg, data.source)
    detections, raw = [], []
    for batch in data.batches:
        found = detect(runner, data.cfg, batch)
        session.update(batch, found)
        detections.append(found)
        raw.append([np.asarray(o) for o in raw_runner(feed_from_batch(batch, data.cfg.feed_names))])
    value, _ = session.result()
    return Pass(getattr(runner, "mode", "?"), value, detections, raw)


def _records(detections: list[dict[str, np.ndarray]], data: Data, min_score: float = 0.0) -> list[dict]:
    """COCO result records (image_id, category_id, bbox xywh, score) of a pass's detections."""
    records = []
    clsid2catid = {v: k for k, v in data.source.dataset.catid2clsid.items()}
    for batch, found in zip(data.batches, detections):
        bbox, nums = np.asarray(found["bbox"]), np.asarray(found["bbox_num"]).reshape(-1)
        ids = np.asarray(batch["im_id"]).reshape(-1)
        start = 0
        for im_id, n in zip(ids, nums):
            for row in bbox[start:start + int(n)]:
                cls, score, x1, y1, x2, y2 = (float(v) for v in row[:6])
                if score < min_score or cls < 0 or int(cls) not in clsid2catid:
                    continue
                records.append({"image_id": int(im_id), "category_id": int(clsid2catid[int(cls)]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            start += int(n)
    return records


def agreement(reference: Pass, other: Pass, data: Data) -> dict[str, Any]:
    """How far `other` agrees with `reference`: COCO mAP of its detections against the
    reference's (score >= GT_MIN_SCORE) as ground truth, and the smallest cosine similarity of
    their raw outputs. ok: mAP >= MIN_AGREEMENT_MAP over >= MIN_BOXES boxes, or with fewer
    boxes cosine >= MIN_COSINE."""
    from .metrics import coco_map_of_records

    truth = _records(reference.detections, data, GT_MIN_SCORE)
    images = data.source.dataset.coco.dataset["images"] if hasattr(data.source.dataset, "coco") else None
    if images is None:
        from pycocotools.coco import COCO

        from .stdout import quiet_stdout
        with quiet_stdout():
            images = COCO(data.source.dataset.get_anno()).dataset["images"]
    result: dict[str, Any] = {"boxes": len(truth), "map": None, "cosine": None}
    if truth:
        anno = {"images": images, "categories": [{"id": c} for c in data.source.dataset.catid2clsid],
                "annotations": [{"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                                 "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
                                for i, r in enumerate(truth)]}
        with tempfile.TemporaryDirectory(prefix="ptqdet_agree_") as tmp:
            path = Path(tmp) / "truth.json"
            path.write_text(json.dumps(anno))
            result["map"] = round(coco_map_of_records(path, _records(other.detections, data))[0], 4)
    cosines = []
    for a_out, b_out in zip(reference.raw, other.raw):
        for a, b in zip(a_out, b_out):
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            if a.shape != b.shape:
                cosines.append(-1.0)
                continue
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cosines.append(1.0 if denom == 0 and not a.any() and not b.any() else float(a @ b / max(denom, 1e-30)))
    result["cosine"] = round(min(cosines), 5) if cosines else None
    # detections decide; a model that detects (almost) nothing has none to score: its raw outputs
    # before NMS do. A random model detecting many boxes at nearly tied scores must agree box for
    # box all the same (its raw outputs' cosine is reported beside)
    if result["boxes"] >= MIN_BOXES:
        result["by"] = "detections"
        result["ok"] = result["map"] is not None and result["map"] >= MIN_AGREEMENT_MAP
    else:
        result["by"] = "raw outputs"
        result["ok"] = result["cosine"] is not None and result["cosine"] >= MIN_COSINE
    return result


def disagreement_line(stage: str, agree: dict[str, Any]) -> str:
    if agree["by"] == "detections":
        return (f"{STAGE_TITLES[stage]} disagrees with the simulated INT8 model: mAP {agree['map']} of its detections "
                f"against the simulated model's {agree['boxes']} boxes (< {MIN_AGREEMENT_MAP}; cosine similarity "
                f"{agree['cosine']} of the outputs before NMS); compare the runtimes with eval.py --backend on your "
                "data before deploying")
    return (f"{STAGE_TITLES[stage]} disagrees with the simulated INT8 model: cosine similarity {agree['cosine']} of "
            f"the outputs before NMS (< {MIN_COSINE}); compare the runtimes with eval.py --backend before deploying")


# ---------------------------------------------------------------------------- the stages

class _NMSAfter:
    """A Paddle runner of a model cut before its NMS: run() applies that NMS (the same Paddle op)."""

    def __init__(self, runner, nms):
        self.runner, self.nms, self.mode = runner, nms, runner.mode

    def raw(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.runner.run(feed)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .postprocess import multiclass_nms

        outputs = self.runner.run(feed)
        bbox, num = multiclass_nms(outputs[0], outputs[1], self.nms)
        return [bbox, num]


def onnx_int8_nodes(onnx_path: Path) -> dict[str, int]:
    """{ONNX op type: nodes whose weight input is a DequantizeLinear} of an INT8 export."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    counts: dict[str, int] = {}
    for node in graph.node:
        if len(node.input) > 1 and producer.get(node.input[1]) == "DequantizeLinear":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def openvino_int8_layers(runner) -> dict[str, int]:
    """{OpenVINO layer type: layers it executes in i8/u8} of the compiled model(s) of a runner."""
    counts: dict[str, int] = {}
    for request in runner._compiled.values():  # noqa: SLF001 - the compiled model is the evidence
        for op in request.get_compiled_model().get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else "?"
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            if precision in ("i8", "u8") and kind in ("Convolution", "FullyConnected", "MatMul"):
                counts[kind] = counts.get(kind, 0) + 1
        break
    return counts


CONV_TYPES = ("conv2d", "depthwise_conv2d", "conv2d_transpose")


@dataclass(frozen=True)
class Head:
    """One map of a model's head in both forms: `paddle`, the variable after the convolution's
    bias (an elementwise_add of the program; the convolution's output where none follows);
    `onnx`, the convolution's output name, which paddle2onnx gives the Conv node it folds the
    bias into."""
    paddle: str
    onnx: str


def head_outputs(files) -> list[Head]:
    """The outputs of the model's last convolutions (no convolution after them), bias added: the
    maps a post-process without an NMS op decodes (CenterNet's and TTFNet's heatmap and box maps,
    read by a top-k), in program order."""
    from .program import read_ops

    ops = read_ops(files)
    consumers: dict[str, list[Any]] = {}
    for op in ops:
        for name in (n for names in op.inputs.values() for n in names):
            consumers.setdefault(name, []).append(op)

    def feeds_a_convolution(name: str) -> bool:
        seen, stack = {name}, [name]
        while stack:
            for op in consumers.get(stack.pop(), []):
                if op.type in CONV_TYPES:
                    return True
                fresh = [out for names in op.outputs.values() for out in names if out not in seen]
                seen.update(fresh)
                stack.extend(fresh)
        return False

    def biased(name: str) -> str:  # through the fake quantization PTQ puts on an observed op's input
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].type in ("quantize_linear", "dequantize_linear"):
            return biased(users[0].outputs["Y"][0])
        if len(users) == 1 and users[0].type == "elementwise_add":  # the bias (a reshaped parameter)
            return users[0].outputs["Out"][0]
        return name

    return [Head(biased(op.outputs["Output"][0]), op.outputs["Output"][0]) for op in ops
            if op.type in CONV_TYPES and not feeds_a_convolution(op.outputs["Output"][0])]


def _paddle_outputs(files, outputs: list[str], options, work: Path, name: str):
    """A Paddle Inference runner of `files` whose outputs are these variables (the head's maps,
    or where the network hands over to a post-process with control flow)."""
    from .backends import open_backend
    from .export import cut_program

    return open_backend("paddle", cut_program(files, work / name, outputs), options)


def _paddle_raw(files, options, work: Path, name: str):
    """A Paddle Inference runner of `files` cut before its NMS (raw outputs), or None."""
    from .backends import open_backend
    from .export import prepare_program

    prepared = prepare_program(files, work / name, strip=False)
    return open_backend("paddle", prepared.files, options) if prepared.nms is not None else None


def new_row(arch: Arch) -> dict[str, Any]:
    """An architecture's row of docs/results/models.json before its stages run."""
    return {"arch": arch.name, "title": arch.title, "family": arch.family, "config": str(arch.model_config),
            "ptq_config": str(arch.ptq_config), "exclude_nms": arch.exclude_nms, "inputs": None,
            "notable_ops": None, "stages": {}, "agreement": {}, "runtimes": {}, "seconds": {},
            "quantizable_layers": None, "quantized_layers": None,
            "fp32_map": None, "int8_map_sim": None, "int8_map_openvino": None, "float_layers": None}


class ArchRun:
    """The stages of one architecture, in order; each method is one stage (STAGES), raising on
    failure. `row` collects what they find."""

    def __init__(self, arch: Arch, cache_dir: Path = CACHE_DIR, refresh: bool = False, threads: int = 1):
        self.arch, self.cache_dir, self.refresh, self.threads = arch, cache_dir, refresh, threads
        self.row = new_row(arch)
        self.stages: dict[str, str] = self.row["stages"]
        self.work = cache_dir / "runs" / arch.name
        self.cfg: Any = None
        self.data: Data | None = None
        self.fp32_files: Any = None
        self.int8_files: Any = None
        self.sim: Pass | None = None
        self.heads: list[Head] = []  # a model without an NMS op: its head's maps, compared as its raw outputs
        # a post-process with control flow (ptqdet.program.post_process_split): where the network hands
        # over to it, compared as its raw outputs (the ONNX model's outputs)
        self.network_outputs: list[str] = []

    def options(self, **kwargs: Any):
        from .model import BackendOptions

        return BackendOptions(threads=self.threads, **kwargs)

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        try:
            for name in STAGES:
                if progress:
                    progress(name)
                self.stage(name, getattr(self, name))
        finally:
            shutil.rmtree(self.work / "sim_raw", ignore_errors=True)
            shutil.rmtree(self.work / "onednn_raw", ignore_errors=True)
        return self.row

    def stage(self, name: str, body: Callable[[], None]) -> None:
        need = NEEDS.get(name)
        if need and self.stages.get(need) != "ok":
            self.stages[name] = f"skipped: needs {STAGE_TITLES[need]}"
            return
        start = time.perf_counter()
        try:
            body()
            self.stages.setdefault(name, "ok")
        except Exception as exc:  # noqa: BLE001 - each stage's failure is its result, in one line
            self.stages[name] = one_line(exc, name)
        self.row["seconds"][name] = round(time.perf_counter() - start, 1)

    def export(self) -> None:
        from .files import resolve_model_files
        from .program import read_program

        self.fp32_files = resolve_model_files(export_model(self.arch, self.cache_dir, self.refresh))
        program = read_program(self.fp32_files)
        self.row["inputs"] = list(program.feed_names)
        self.row["notable_ops"] = sorted({op.type for op in program.ops} & set(NOTABLE_OPS))

    def fp32(self) -> None:
        from .backends import open_backend
        from .config import load_config
        from .program import check_config_model
        from .quantize import layer_weights

        ensure_eval_slice()
        cfg = load_config(self.arch.ptq_config)
        if Path(cfg.model_dir) != export_dir(self.arch, self.cache_dir):
            cfg = dataclasses.replace(cfg, model_dir=export_dir(self.arch, self.cache_dir))
        check_config_model(cfg, self.fp32_files)  # what post_quant.py checks first
        self.cfg, self.data = cfg, load_data(cfg)
        # plain kernels: the reference (oneDNN FP32 fails on some exports, e.g. CenterNet's binary ops)
        runner = open_backend("paddle", self.fp32_files, self.options(mkldnn=False))
        fp32 = run_pass(runner, runner.run, self.data)
        self.row["runtimes"]["fp32"] = fp32.runtime
        self.row["random_fp32_map"] = round(fp32.map, 4)
        self.row["quantizable_layers"] = len(layer_weights(self.fp32_files, cfg.ptq.quantizable_op_type))

    def ptq(self) -> None:
        from .files import ModelFiles
        from .quantize import SAVED_FILES, quantize

        out = self.work / "int8"
        result = quantize(self.cfg, out, progress=False)  # Paddle's PTQ failing inside: one line (ConfigError)
        self.int8_files = ModelFiles(out, *SAVED_FILES)
        self.row["quantized_layers"] = len(result.quantized_layers)
        if not result.quantized_layers:
            raise ConfigError(f"PTQ quantized no layer of {self.arch.name}: none of its layers is of the op types "
                              f"{self.cfg.ptq.quantizable_op_type} (PTQ.quantizable_op_type)")

    def int8_sim(self) -> None:
        """The reference: the INT8 model cut before its NMS (raw outputs), then the same NMS op."""
        from .backends import open_backend
        from .export import ExportError, prepare_program
        from .program import post_process_split, read_program

        split = post_process_split(read_program(self.fp32_files))
        cut, nms = self.int8_files, None
        if split is not None:  # a post-process with control flow, which the ONNX export leaves in Paddle: where
            self.network_outputs = split.network_outputs  # the network hands over to it are the raw outputs
        else:
            try:
                prepared = prepare_program(self.int8_files, self.work / "sim_raw", strip=False)
                cut, nms = prepared.files, prepared.nms
                self.heads = head_outputs(self.int8_files) if nms is None else []
            except ExportError:  # an NMS ptqdet cannot reproduce (normalized=False, nms_eta < 1) or SSD anchors
                pass  # of a dynamic input size: the whole model
        runner = open_backend("paddle", cut, self.options(mkldnn=False))
        raw = runner.run
        if nms is not None:
            runner = _NMSAfter(runner, nms)
            raw = runner.raw
        elif self.network_outputs or self.heads:  # no NMS op (a top-k decodes the head's maps), or after a loop
            raw = _paddle_outputs(self.int8_files, self.network_outputs or [h.paddle for h in self.heads],
                                  self.options(mkldnn=False), self.work, "sim_heads").run
        self.sim = run_pass(runner, raw, self.data)
        self.row["runtimes"]["int8_sim"] = self.sim.runtime
        self.row["random_int8_map_sim"] = round(self.sim.map, 4)

    def compare(self, name: str, runner, raw_run) -> None:
        found = run_pass(runner, raw_run, self.data)
        self.row["runtimes"][name] = found.runtime
        agree = agreement(self.sim, found, self.data)
        self.row["agreement"][name] = agree
        if not agree["ok"]:
            self.stages[name] = disagreement_line(name, agree)

    def onednn_int8(self) -> None:
        from .backends import open_backend
        from .export import ExportError

        runner = open_backend("paddle", self.int8_files, self.options())
        if runner.mode != "oneDNN INT8":
            raise ConfigError(f"Paddle Inference ran {self.arch.name}'s INT8 model as {runner.mode}, not on oneDNN "
                              "INT8 kernels (an op it fuses lacks input scales); deploy on OpenVINO instead")
        raw = None
        try:
            if not self.network_outputs:
                raw = _paddle_raw(self.int8_files, self.options(), self.work, "onednn_raw")
        except ExportError:
            pass
        if raw is None and (self.heads or self.network_outputs):
            raw = _paddle_outputs(self.int8_files, self.network_outputs or [h.paddle for h in self.heads],
                                  self.options(), self.work, "onednn_heads")
        self.compare("onednn_int8", runner, (raw or runner).run)

    def onnx_export(self) -> None:
        from .export import export_onnx

        export = export_onnx(self.int8_files, self.work / "onnx")
        self.row["onnx_nms_after"] = export.nms is not None
        self.row["onnx_int8_nodes"] = onnx_int8_nodes(export.onnx_path)

    def openvino_int8(self) -> None:
        from .backends import open_backend

        runner = open_backend("openvino", self.work / "onnx", self.options())
        # NMS inside the compiled model; the raw outputs from a second one without it
        raw = open_backend("openvino", self.work / "onnx", self.options(openvino_nms=False))
        self.compare("openvino_int8", runner, self._onnx_raw(raw))
        self.row["openvino_int8_layers"] = openvino_int8_layers(runner)

    def onnxruntime_int8(self) -> None:
        from .backends import open_backend

        runner = open_backend("onnxruntime", self.work / "onnx", self.options())  # NMS after the model: one session
        raw = open_backend("onnxruntime", self.work / "onnx", self.options()) if self.heads else runner
        self.compare("onnxruntime_int8", runner, self._onnx_raw(raw))

    def _onnx_raw(self, raw) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        """The raw outputs of an ONNX runner (before its NMS), as the simulated model's: the
        head's maps (added as outputs by name) when the model has no NMS op."""
        if self.heads:
            raw.add_outputs([h.onnx for h in self.heads])
            return lambda feed: raw._infer_batch(raw._feed(feed))[-len(self.heads):]  # noqa: SLF001
        return lambda feed: raw._infer_batch(raw._feed(feed))  # noqa: SLF001


def claim(claim_dir: Path, name: str) -> bool:
    """Take `name` for this process: True once, for the first process that asks in `claim_dir`
    (a file created exclusively), False for every other. Runs sharing the folder split the
    architectures by how long each takes instead of by a fixed half."""
    claim_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(claim_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_arch(arch: Arch, cache_dir: Path = CACHE_DIR, refresh: bool = False,
             progress: Callable[[str], None] | None = None, threads: int = 1) -> dict[str, Any]:
    """Every stage of one architecture; its row of docs/results/models.json."""
    return ArchRun(arch, cache_dir, refresh, threads).run(progress)


# ---------------------------------------------------------------------------- matrix and docs

def distinct_models(arch_names: list[str]) -> set[str]:
    """The model configs behind these rows (PicoDet with and without NMS is one model)."""
    return {ARCH_BY_NAME[n].model_config.stem for n in arch_names if n in ARCH_BY_NAME}


def passes(row: dict[str, Any], stages: tuple[str, ...]) -> bool:
    return all(row["stages"].get(s) == "ok" for s in stages)


TRAINED_FIELDS = ("fp32_map", "int8_map_sim", "int8_map_openvino", "float_layers", "zoo")


def write_results(rows: list[dict[str, Any]], path: Path = RESULTS_JSON, merge: bool = True) -> Path:
    """rows into docs/results/models.json (in ARCHS order; merge: keep other archs' rows)."""
    old = {r["arch"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    by_name = dict(old) if merge else {}
    for row in rows:  # a trained model's fields (ptqdet.zoo) outlive a coverage run of its architecture
        kept = {k: v for k, v in old.get(row["arch"], {}).items() if k in TRAINED_FIELDS and row.get(k) is None}
        by_name[row["arch"]] = {**row, **kept}
    order = [a.name for a in ARCHS]
    ordered = sorted(by_name.values(), key=lambda r: order.index(r["arch"]) if r["arch"] in order else len(order))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ordered, indent=1) + "\n")
    return path


def _cell(value: str) -> str:
    if value == "ok":
        return "ok"
    if value.startswith("skipped"):
        return "-"
    return "**no**"


NOTES = """## Notes on the exports

- **Faster R-CNN, TOOD, DINO**: PaddleDetection 2.6's code indexes or concatenates values of
  `paddle.shape(x)` (`rois_num[idx]`, `paddle.concat([w, h])`), which Paddle >= 2.5 returns as
  0-D tensors; its dynamic-to-static conversion refuses them, whatever the config or input spec
  (Faster R-CNN's documented `export_onnx: True` takes another branch that fails the same way).
  TOOD exports with `TOODHead: use_align_head: False` (its task-aligned head's grid sampling is
  the failing code), which changes the model (row `tood_r18_noalign`). Its post-process clips the
  boxes in a per-image `while` loop that rewrites them; Paddle's PTQ put a quantize/dequantize
  pair on them and linked it into the loop's own readers (a cycle: "Generated graph shouldn't
  contain cycle"); ptqdet leaves a variable with more than one version without a pair.
- **PicoDet without NMS** is exported with `export.nms=False` (PicoDet's switch; PP-YOLOE's is
  `exclude_nms=True`): the export then has no `scale_factor` input and its boxes are in the
  network input's pixels, not the image's.
- **PTQ.algo**: the coverage configs use `avg` (the demo's recipe) except where Paddle 2.6's avg
  sampler fails on the export's 0-D shape arithmetic (GFL, TOOD, RetinaNet, YOLOF, CenterNet,
  PAFNet, DETR: `abs_max`, named in each config).
- **CenterNet** exports run one image at a time (batch 1 in its config).
- **RetinaNet, YOLOF**: their post-process loops over the images of a batch (a `while` op, with
  tensor arrays) before its NMS, which paddle2onnx cannot convert. The ONNX export ends where
  the network hands its maps to the post-process; the post-process (decode, top-k, NMS) is kept
  as a Paddle program beside the ONNX model (`post_process/`, `ptqdet.program.post_process_split`),
  which the OpenVINO and ONNX Runtime runners run on Paddle's FP32 kernels after the model. Their
  raw outputs are those maps.
- **Agreement of random models**: a runtime agrees when its detections score mAP >= 0.9 against
  the simulated model's (at least 50 boxes); a random model that detects fewer is compared on
  its raw outputs before NMS instead (cosine >= 0.99). CenterNet and PAFNet have no NMS op (a
  top-k decodes their head's maps): their raw outputs are the maps of the head's last
  convolutions. At PaddleDetection's initialisation a random model scores thousands of boxes
  alike (YOLOv3: about 0.25 everywhere), and which of them NMS or a top-k keeps is a tie-break
  that says nothing of the runtime; so before the export of the YOLO heads (YOLOv3,
  PP-YOLO-tiny: no score prior) every convolution with a bias (the heads' predictions) gets its
  weights x10 and a N(0, 1) bias shift (seeded: `ptqdet.coverage.untie_scores`). Heads with a
  score prior detect nothing at initialisation and are compared on their raw outputs; spread
  the same way, their box regressions degenerate and their detections disagree on every
  runtime. A row that says "no" has its raw outputs' cosine beside (CenterNet: 0.995 on
  OpenVINO, its 1600 boxes at tied scores).
"""


def _matrix_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["architecture", "config", *[STAGE_TITLES[s] for s in STAGES]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.get("title", row["arch"]), f"`{Path(row['config']).name}`"
                 + (" exclude_nms" if row.get("exclude_nms") else "")]
        cells += [_cell(row["stages"].get(s, "skipped")) for s in STAGES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _details_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| architecture | inputs | notable ops | layers INT8 / quantizable | INT8 on OpenVINO | "
             "agreement with simulated INT8 |", "|---|---|---|---|---|---|"]
    for row in rows:
        agree = []
        for stage, a in row.get("agreement", {}).items():
            how = (f"mAP {a['map']} over {a['boxes']} boxes" if a["by"] == "detections"
                   else f"cosine {a['cosine']} (raw outputs; {a['boxes']} boxes)")
            agree.append(f"{STAGE_TITLES[stage]}: {how}")
        layers = (f"{row['quantized_layers']} / {row['quantizable_layers']}"
                  if row.get("quantized_layers") is not None else "-")
        ov = ", ".join(f"{n} {k}" for k, n in sorted((row.get("openvino_int8_layers") or {}).items())) or "-"
        lines.append(f"| {row['arch']} | {', '.join(row.get('inputs') or []) or '-'} | "
                     f"{', '.join(row.get('notable_ops') or []) or '-'} | {layers} | {ov} | "
                     f"{'; '.join(agree) or '-'} |")
    return lines


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def trained_cells(row: dict[str, Any]) -> list[str]:
    """One row of the trained table (docs/models.md, docs/results/zoo.md)."""
    zoo = row.get("zoo") or {}
    nncf = zoo.get("nncf") or {}
    analysis = zoo.get("analysis") or {}
    floats = analysis.get("float_layers") if analysis else None
    trained = (f"reused ({zoo['reused']})" if zoo.get("reused") else
               f"{zoo.get('epochs_done')}/{zoo.get('epochs')} ep, {_num(zoo.get('train_minutes'), 0)} min"
               + (" (budget)" if zoo.get("stopped_by_budget") else ""))
    total = zoo.get("quantizable_layers") or row.get("quantizable_layers")
    layers = f"{total - (row.get('float_layers') or 0)} / {total}" if total else "-"
    return [zoo.get("title") or row["arch"], trained, _pts(row.get("fp32_map")), _pts(row.get("int8_map_sim")),
            _pts(row.get("int8_map_openvino")), layers,
            "-" if not analysis else f"{floats} ({_pts(analysis.get('verified_map'))})",
            _num(zoo.get("ptq_seconds"), 0), _num(zoo.get("int8_fp32")), _num(zoo.get("int8_bf16")),
            _pts(nncf.get("map")), _num(nncf.get("int8_fp32"))]


TRAINED_HEADERS = ["architecture", "trained", "FP32 mAP", "INT8 mAP (simulated)", "INT8 mAP (OpenVINO)",
                   "layers INT8 / quantizable", "analysis: layers in float (mAP)", "PTQ s", "OpenVINO INT8/FP32",
                   "OpenVINO INT8/bf16", "NNCF INT8 mAP (OpenVINO)", "NNCF INT8/FP32"]

TRAINED_NOTES = """mAP@[.5:.95] x100 on the 200 demo val images. "trained": epochs done of the schedule and the
CPU minutes of its one training thread, i.e. its wall minutes on an idle machine (the wall minutes
of a run on a shared machine are in outputs/zoo/<arch>.json; "budget": stopped at `--max_minutes`;
"reused": the demo model, trained by `tools/train_demo.py`). INT8: the config recipe
(`configs/zoo/<arch>_ptq.yaml`), every convolution INT8, QDQ form; simulated = the quantized
Paddle graph on FP32 kernels, OpenVINO = its ONNX QDQ export on OpenVINO (f32 for the float ops).
Latency: OpenVINO, batch 1, 1 thread, FP32 (f32), FP32 at bf16 and INT8 run by run in alternation
(200 runs each, median). NNCF: its `nncf.quantize` (preset performance) of the same FP32 ONNX
export, calibrated on the same images. "analysis": run where INT8 is more than 1.0 point below
FP32; the layers it keeps in float and the held-out mAP of that model."""


def trained_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the rows with a trained model (fp32_map set)."""
    from .report import markdown_table

    trained = [r for r in rows if r.get("fp32_map") is not None]
    return markdown_table(TRAINED_HEADERS, [trained_cells(r) for r in trained]) if trained else ""


def trained_headers(rows: list[dict[str, Any]]) -> str:
    """The results headers (when, where, which command, idle or not) the trained rows were
    measured under; each named with its rows when they are more than one."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        header = (r.get("zoo") or {}).get("header")
        if r.get("fp32_map") is not None and header:
            groups.setdefault(header, []).append(r["arch"])
    if len(groups) == 1:
        return next(iter(groups))
    return "\n".join(f"Measured for {', '.join(archs)}:\n\n{header}" for header, archs in groups.items())


def zoo_markdown(rows: list[dict[str, Any]]) -> str:
    """The body of docs/results/zoo.md and of docs/models.md's trained section."""
    notes = [f"- **{r['zoo'].get('title') or r['arch']}**: "
             + ". ".join(t for t in (r["zoo"].get("status"), r["zoo"].get("note")) if t) + "." for r in rows
             if r.get("zoo") and (r["zoo"].get("note") or r.get("fp32_map") is None)]
    return (trained_table(rows) + "\n\n" + TRAINED_NOTES + "\n"
            + ("\nEach architecture's run:\n\n" + "\n".join(notes) + "\n" if notes else ""))


def undated(header: str) -> str:
    """A results header without its date line (docs/results/ alone holds measurement dates)."""
    return "\n".join(line for line in header.split("\n") if not line.startswith("- date:"))


def _trained_table(rows: list[dict[str, Any]]) -> str:
    """The trained zoo's section (rows with fp32_map, from `make zoo`: ptqdet.zoo), under the
    results headers it was measured under."""
    trained = [r for r in rows if r.get("fp32_map") is not None]
    if not trained:
        return ""
    return ("\n## Trained models (the zoo)\n\nEach architecture trained on the demo shapes dataset on CPU, then "
            "quantized and measured by `make zoo` (`tools/zoo.py`, ptqdet.zoo; also in "
            "[results/zoo.md](results/zoo.md), with the dates of the runs).\n\n"
            + undated(trained_headers(trained)) + "\n"
            + zoo_markdown(trained))


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """docs/models.md from the rows of docs/results/models.json."""
    errors = [(row, s, v) for row in rows for s, v in row["stages"].items()
              if v != "ok" and not v.startswith("skipped")]
    through = [r["arch"] for r in rows if passes(r, ("ptq", "int8_sim", "openvino_int8"))]
    text = f"""# Supported models: the architecture coverage matrix

Generated by `.venv/bin/python tools/coverage.py --write_docs` from
[results/models.json](results/models.json); do not edit by hand. `tools/coverage.py` (without
`--write_docs`) runs the stages again and rewrites both; `tests/test_coverage.py` runs the same
stages and checks this file against them.

Each architecture is a PaddleDetection 2.6 config (`configs/coverage/<arch>.yml`: PaddleDetection's
own model settings, small backbone and width, 160x160 input, 6 classes of the demo shapes
dataset) with **random weights**, exported as PaddleDetection's `tools/export_model.py` does (NMS
inside unless marked `exclude_nms`), then run through ptqdet with its config
(`configs/coverage/<arch>_ptq.yaml`: convolutions INT8, and DETR's linear layers in its second
row, QDQ form, 4 calibration images, 16 evaluation images). A stage is "ok", or **no** with the
one line a user gets (below), or "-" when a stage it needs failed. An INT8 runtime is "ok" only
when it agrees with the simulated INT8 model (Paddle Inference, fake-quant ops on FP32 kernels):
its detections scored against the simulated model's (COCO mAP >= {MIN_AGREEMENT_MAP} over >= {MIN_BOXES}
boxes) or, where a random model detects fewer boxes, its raw outputs before NMS (cosine
similarity >= {MIN_COSINE}; for a model without an NMS op, the maps of its head's last convolutions).

{len(through)} of {len(rows)} rows run through PTQ, simulated INT8 and OpenVINO INT8: \
{len(distinct_models(through))} distinct models of {len(distinct_models([r["arch"] for r in rows]))} (the other rows \
export or quantize one of them another way).

{chr(10).join(_matrix_table(rows))}

## Why a stage fails

{chr(10).join(f"- **{row['arch']}**, {STAGE_TITLES[s]}: {v}" for row, s, v in errors) or "No stage fails."}

{NOTES}
## Details

"INT8 on OpenVINO": the layers of the compiled model OpenVINO executes in i8/u8 (its runtime
model), by type.

{chr(10).join(_details_table(rows))}
"""
    return text + _trained_table(rows)


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_docs(results: Path = RESULTS_JSON, out: Path = MODELS_MD) -> Path:
    rows = json.loads(Path(results).read_text())
    out.write_text(render_markdown(rows))
    return out
