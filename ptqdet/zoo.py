"""The trained zoo: each architecture trained on the demo shapes dataset (CPU, short schedule),
exported like PaddleDetection, then quantized with its config recipe and measured
(docs/models.md's trained table, docs/results/zoo.md).

For each ZooArch, in steps that are each cached so that a re-run skips what is done:

1. train: configs/zoo/<name>.yml (its coverage model, a 160 px TrainReader, epochs, LR) into
   outputs/zoo/train/<name>-<key>/, the key a digest of the configs' bytes and the dataset
   (train_key); a stopped run resumes from its last epoch checkpoint; `max_minutes` stops a run
   at the end of the epoch past its budget (the export then takes that epoch's checkpoint).
   PicoDet and PP-YOLOE reuse the demo models (demo/models/*, tools/train_demo.py).
2. export: as PaddleDetection's tools/export_model.py, to outputs/zoo/models/<name>/.
3. measure: configs/zoo/<name>_ptq.yaml's recipe (every convolution INT8, QDQ form) through
   ptqdet.recipe_bench: FP32 mAP, simulated and OpenVINO INT8 mAP, PTQ wall time, OpenVINO
   latency (FP32 f32, FP32 bf16, INT8; 1 thread, run by run in alternation) and, where
   .venv-nncf exists, NNCF's INT8 of the same ONNX export (ptqdet.peers).

Each model's results go to outputs/zoo/<name>.json (atomically), then into the rows of
docs/results/models.json (ptqdet.coverage.write_results) and the tables of docs/models.md and
docs/results/zoo.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import atomic_write_text

ZOO_CONFIGS = Path("configs/zoo")
ZOO_DIR = Path("outputs/zoo")
DATASET = Path("dataset/shapes")
TRAIN_RECIPE = 1  # bump when the way models are trained or exported changes (cache key)
MEASURE_RECIPE = 1  # bump when what the measure step records changes
MAX_GAP = 0.01  # INT8 within 1.0 point of FP32 (mAP 0-1)
MIN_FP32_MAP = 0.20


@dataclass(frozen=True)
class ZooArch:
    name: str  # the row of docs/results/models.json (ptqdet.coverage's arch name)
    title: str
    reuse: str | None = None  # an export trained earlier (demo/models/...): not trained again
    source_config: str | None = None  # the training config of a reused export
    exclude_nms: bool = False
    backbone: str | None = None  # a shapes-pretrained backbone (ptqdet.demo.backbone.SOURCES) its config starts from
    note: str = ""  # what a reader of the table should know (why a schedule is what it is, what failed)

    @property
    def train_config(self) -> Path:
        return Path(self.source_config) if self.source_config else ZOO_CONFIGS / f"{self.name}.yml"

    @property
    def ptq_config(self) -> Path:
        return ZOO_CONFIGS / f"{self.name}_ptq.yaml"


LCNET = "LCNet x0.75 from the demo PicoDet-s, shapes-pretrained"

ZOO: tuple[ZooArch, ...] = (
    ZooArch("picodet_s", "PicoDet-s (LCNet x0.75, 256 px; the demo model)", reuse="demo/models/picodet_s_shapes",
            source_config="configs/demo/picodet_s_lcnet_shapes.yml"),
    ZooArch("ppyoloe_plus_s", "PP-YOLOE-s (CSPResNet s, 256 px, exclude_nms; the demo model)",
            reuse="demo/models/ppyoloe_s_shapes", source_config="configs/demo/ppyoloe_crn_s_shapes.yml",
            exclude_nms=True),
    ZooArch("yolox_nano", f"YOLOX (nano neck and head; backbone: {LCNET})", backbone="lcnet_x0_75",
            note="trained on ImageNet-normalized images as the zoo evaluates them (an earlier run on a random "
            "CSPDarkNet-nano with PaddleDetection's raw 0-255 YOLOX input scored 0.0 on the normalized val "
            "images); with the pretrained backbone and normalized input its mAP after the first epoch is still "
            "about 0, so the input was not the cause (or not the only one); a re-run's losses over its first 150 "
            "iterations: objectness 6.4 to 2.9, IoU (1 - IoU^2) only 0.98 to 0.86, the boxes hardly learning: "
            "stopped there, `tools/zoo.py --archs yolox_nano` resumes it"),
    ZooArch("ssdlite_mbv3_small", "SSDLite (MobileNetV3-small)",
            note="1.5 s per iteration (batch 16) at 160 px; mAP 0.1 after each of its first 3 epochs (base_lr 0.1 at "
            "batch 16, 8x PaddleDetection's rate per image, whose own schedule is 1700 epochs): stopped there to "
            "give the time to the architectures that learn; `tools/zoo.py --archs ssdlite_mbv3_small` resumes it"),
    ZooArch("ppyolo_tiny", f"PP-YOLO-tiny (PPYOLOTinyFPN; backbone: {LCNET})", backbone="lcnet_x0_75",
            note="anchors from the shapes' box sizes at 160 px (a random MobileNetV3 x0.5 with COCO's anchors "
            "reached 8.5 mAP in 8 epochs); on the pretrained LCNet its mAP rises about a point per epoch: "
            "its 4-epoch schedule ends far under the 20 bar, as the other YOLO heads here (YOLOv3, YOLOX)"),
    ZooArch("yolov3_mbv3", f"YOLOv3 (YOLOv3FPN; backbone: {LCNET})", backbone="lcnet_x0_75",
            note="anchors from the shapes' box sizes at 160 px; YOLOv3FPN's fixed widths make most of its cost "
            "(3.5 s per iteration on one core): stopped in its first epoch to give the time to FCOS' longer "
            "schedule; `tools/zoo.py --archs yolov3_mbv3` resumes it"),
    ZooArch("fcos_r18", f"FCOS (FPN 64, one head convolution; backbone: {LCNET})", backbone="lcnet_x0_75",
            note="made cheap: FPN of 64 channels, one GroupNorm convolution per head branch, input padded to 32 "
            "(a random ResNet-18 with FPN 256 and input padded to 256 took 10 s per iteration); 6 epochs (3 ended "
            "under the 20 bar, still rising)"),
    ZooArch("gfl_r18", f"GFL (FPN; backbone: {LCNET})", backbone="lcnet_x0_75",
            note="measured again after ptqdet's Paddle predictors stopped running matmul_v2_scale_fuse_pass (it "
            "rescaled the distribution projection GFLHead's five levels share once per level: FP32 read 0); "
            "without depthwise equalization (the zoo's recipe since) every convolution in INT8 lost more than a "
            "point, and the analysis needed more than 5% of its layers in float to come within one"),
    ZooArch("tood_r18_noalign", f"TOOD (FPN, TOODHead without its align head; backbone: {LCNET})",
            backbone="lcnet_x0_75",
            note="without the align head: PaddleDetection 2.6 cannot export its grid sampling on Paddle 2.6 (row "
            "tood_r18); four FPN levels (strides 8-64: ATSS takes 9 anchors per level, and at 160 px the stride-128 "
            "level has 4); ATSS assignment for its first 2 of 5 epochs, task-aligned after (PaddleDetection: 4 of 12); "
            "PTQ with abs_max as its coverage config (Paddle 2.6's own avg sampler fails on the export; ptqdet's "
            "one-pass calibration, which runs on CPU, takes avg too)"),
    ZooArch("centernet_mbv3_small", f"CenterNet (CenterNetDLAFPN, stride 4; backbone: {LCNET})",
            backbone="lcnet_x0_75", note="trained on images stretched to 160 px in RGB as the zoo evaluates "
            "them (PaddleDetection's CenterNet reader warps with the aspect ratio kept and swaps to BGR)"),
    ZooArch("pafnet_lite", f"PAFNet-lite (TTFNet family: TTFFPN lite, TTFHead; backbone: {LCNET})",
            backbone="lcnet_x0_75",
            note="TTFFPN reads four backbone levels (LCNet's strides 4-32); 7 epochs, one image at a time in "
            "evaluation (TTFBox decodes only a batch's first image); on a 5-epoch schedule it read 2.3 and 6.1 mAP "
            "after two epochs, so it got two more, which took it past the 45-minute budget on one thread"),
    ZooArch("retinanet_r18", f"RetinaNet (FPN, GroupNorm head, anchors at half size; backbone: {LCNET})",
            backbone="lcnet_x0_75",
            note="GroupNorm in its two head convolutions (as FCOS has): with RetinaNet's own unnormalized head "
            "(weights N(0, 0.01)) the focal loss hardly moved (1.13 to 1.12 in 150 iterations; 3 epochs ended near 1 "
            "mAP), with GroupNorm it fell to 0.63 in those 150; 10 epochs at LR 0.02 (at 0.01 the same 10 epochs "
            "ended at 17.9 FP32, 17.6 INT8 on OpenVINO); PTQ with abs_max (Paddle 2.6's avg sampler fails on its "
            "export); its per-image loop before NMS stays a Paddle post-process program beside the ONNX model"),
    ZooArch("yolof_r18", f"YOLOF (dilated encoder, one level at stride 16; backbone: {LCNET})",
            backbone="lcnet_x0_75",
            note="LCNet's stride-16 level (10x10 at 160 px, anchors 8-128 px), not YOLOF's stride 32 (5x5); LR 0.015 "
            "at batch 8 (PaddleDetection's YOLOF rate per image), a 12-epoch schedule: mAP 0.1 and 0.3 after its "
            "first two epochs (RetinaNet on the same backbone: 5.4 and 9.1), its boxes near the shapes but every "
            "class scored alike (0.2-0.27), the classifier not yet separating them; why it learns so slowly here "
            "is not established; a suspect: few positives per box (its uniform assigner, predictions = anchors, on 141 "
            "training boxes: 3.2 on average, none for 7, 1.4 under 16 px; RetinaNet's IoU assigner: 6.8, none for 0); "
            "stopped there to give the time to RetinaNet; `tools/zoo.py --archs yolof_r18` resumes it"),
)
ZOO_BY_NAME = {a.name: a for a in ZOO}


# ---------------------------------------------------------------------------- cache keys and files

def dataset_digest(root: Path = DATASET) -> str:
    """The shapes dataset's annotations (bytes) and images (names and sizes)."""
    digest = hashlib.sha256()
    for anno in sorted((root / "annotations").glob("*.json")):
        digest.update(anno.name.encode() + b"\0" + anno.read_bytes())
    for image in sorted(root.glob("*/*.jpg")):
        digest.update(f"{image.parent.name}/{image.name}:{image.stat().st_size}".encode())
    return digest.hexdigest()


def config_digest(config: Path) -> str:
    """The training config and every _BASE_ file it names (bytes)."""
    from .coverage import _config_chain

    digest = hashlib.sha256()
    for file in _config_chain(Path(config)):
        digest.update(str(file).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def train_key(arch: ZooArch, data_digest: str) -> str:
    """What a trained model depends on: its configs' bytes, the dataset, the recipe version and
    the export its pretrained backbone comes from."""
    text = f"{config_digest(arch.train_config)}|{data_digest}|{arch.exclude_nms}|{TRAIN_RECIPE}"
    if arch.backbone:
        from .demo.backbone import SOURCES, export_digest

        text += f"|{arch.backbone}:{export_digest(Path(SOURCES[arch.backbone].export))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir(arch: ZooArch, key: str, root: Path = ZOO_DIR) -> Path:
    return root / "train" / f"{arch.name}-{key}"


def export_dir(arch: ZooArch, root: Path = ZOO_DIR) -> Path:
    return Path(arch.reuse) if arch.reuse else root / "models" / arch.name


def results_path(arch: ZooArch, root: Path = ZOO_DIR) -> Path:
    return root / f"{arch.name}.json"


def read_results(arch: ZooArch, root: Path = ZOO_DIR) -> dict[str, Any]:
    path = results_path(arch, root)
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(arch: ZooArch, results: dict[str, Any], root: Path = ZOO_DIR) -> Path:
    """outputs/zoo/<name>.json, written atomically (a killed run leaves the old file whole)."""
    root.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(results_path(arch, root), json.dumps(results, indent=1) + "\n")


def step_done(results: dict[str, Any], step: str, key: str) -> bool:
    """Whether `step` finished for this key (a record of another key is stale)."""
    return results.get(step, {}).get("key") == key and results[step].get("done", False)


# ---------------------------------------------------------------------------- train and export

class TrainBar:
    """A tqdm bar over one model's training iterations, created at the first step (the iterations
    per epoch are known then). After each epoch (checkpoint saved, mAP recorded) it calls
    `on_epoch(epochs done, minutes so far)` and stops the run once `max_minutes` (counted with
    `spent` minutes of earlier runs) have passed. Minutes are the process's CPU time: training runs
    on one thread, so they are the wall minutes of an idle machine, whatever else shares the CPU
    (wall minutes are kept beside them)."""

    def __init__(self, name: str, epochs: int, start_epoch: int, max_minutes: float | None, spent: float = 0.0,
                 on_epoch: Callable[[int, float], None] | None = None):
        self.name, self.epochs, self.start_epoch = name, epochs, start_epoch
        self.max_minutes, self.spent, self.on_epoch = max_minutes, spent, on_epoch
        self.started, self.cpu_started = time.time(), time.process_time()
        self.bar: Any = None
        self.stopped_at: int | None = None

    def minutes(self) -> float:
        return self.spent + (time.process_time() - self.cpu_started) / 60

    def wall_minutes(self) -> float:
        return (time.time() - self.started) / 60

    def __call__(self, status: dict) -> None:
        from tqdm import tqdm

        steps = int(status["steps_per_epoch"])
        if self.bar is None:
            self.bar = tqdm(total=self.epochs * steps, initial=self.start_epoch * steps, desc=f"train {self.name:<20}",
                            unit="it", mininterval=5.0)
        self.bar.update(1)

    def epoch_end(self, status: dict) -> None:
        from .demo.train import StopTraining

        epoch = int(status["epoch_id"]) + 1
        if self.on_epoch:
            self.on_epoch(epoch, self.minutes())
        if self.max_minutes is not None and self.minutes() > self.max_minutes and epoch < self.epochs:
            self.stopped_at = epoch
            raise StopTraining

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_step(arch: ZooArch, key: str, root: Path = ZOO_DIR, max_minutes: float | None = None) -> dict[str, Any]:
    """Train (or resume) arch into its run folder; returns the train record (weights to export,
    epochs done, minutes, curve)."""
    from .demo.train import StopTraining, last_checkpoint, load_train_config, train

    folder = run_dir(arch, key, root)
    cfg = load_train_config(arch.train_config, folder.name, folder.parent)
    if arch.backbone:
        check_pretrained(arch, cfg)
    epochs = int(cfg.epoch)
    previous = read_results(arch, root).get("train", {})
    spent = previous.get("minutes", 0.0) if previous.get("key") == key else 0.0
    spent_wall = previous.get("wall_minutes", 0.0) if previous.get("key") == key else 0.0

    def record(done: int, minutes: float, stopped: bool = False) -> dict[str, Any]:
        final = done == epochs
        return {"key": key, "done": final or stopped, "weights": str(folder / "model_final" if final else
                                                                     last_checkpoint(folder)),
                "epochs_done": done, "epochs": epochs, "minutes": round(minutes, 1),
                "wall_minutes": round(spent_wall + bar.wall_minutes(), 1), "stopped_by_budget": stopped,
                "max_minutes": max_minutes, "curve": _curve(folder)}

    def on_epoch(done: int, minutes: float) -> None:  # progress kept: a killed run resumes with its minutes
        save_results(arch, {**read_results(arch, root), "train": record(done, minutes)}, root)

    bar = TrainBar(arch.name, epochs, epochs_done(folder, epochs), max_minutes, spent, on_epoch)
    if not (folder / "model_final.pdparams").is_file():
        try:
            train(cfg, folder, last_checkpoint(folder), on_step=bar)
        except StopTraining:
            pass
        finally:
            bar.close()
    return record(epochs_done(folder, epochs), bar.minutes(), bar.stopped_at is not None)


def check_pretrained(arch: ZooArch, cfg) -> Path:
    """Write arch's shapes-pretrained backbone file (ptqdet.demo.backbone) and check that its
    config's pretrain_weights name it (a config that does not would train from scratch)."""
    from .demo.backbone import ensure_pretrained

    path = ensure_pretrained(arch.backbone)
    named = cfg.get("pretrain_weights")
    if not named or Path(str(named)).with_suffix(".pdparams") != path.with_suffix(".pdparams"):
        raise ValueError(f"{arch.train_config}: pretrain_weights is {named!r}, not {path} ({arch.backbone})")
    return path


def epochs_done(folder: Path, epochs: int) -> int:
    """Epochs trained in a run folder: ppdet saves epoch index k as `k` (k + 1 epochs done) and the
    last epoch as model_final only."""
    from .demo.train import last_checkpoint

    if (Path(folder) / "model_final.pdparams").is_file():
        return epochs
    last = last_checkpoint(folder)
    return int(last.name) + 1 if last else 0


def _curve(folder: Path) -> list[dict[str, Any]]:
    path = folder / "curve.json"
    return json.loads(path.read_text()) if path.is_file() else []


def export_step(arch: ZooArch, key: str, weights: Path, train_key_: str, root: Path = ZOO_DIR) -> dict[str, Any]:
    """The checkpoint `weights` exported as PaddleDetection's tools/export_model.py does."""
    from .demo.train import export, load_train_config

    folder = run_dir(arch, train_key_, root)
    cfg = load_train_config(arch.train_config, folder.name, folder.parent)
    out = export(cfg, weights, export_dir(arch, root), arch.exclude_nms)
    return {"key": key, "done": True, "weights": str(weights), "export": str(out)}


# ---------------------------------------------------------------------------- measure

CONFIG_RECIPE_NAME = "config recipe"


def ptq_config(arch: ZooArch, root: Path = ZOO_DIR):
    """configs/zoo/<name>_ptq.yaml with model_dir set to the zoo's export."""
    from .config import load_config

    cfg = load_config(arch.ptq_config)
    return dataclasses.replace(cfg, model_dir=export_dir(arch, root))


def measure_key(arch: ZooArch, train_record_key: str) -> str:
    text = f"{train_record_key}|{config_digest(arch.ptq_config)}|{MEASURE_RECIPE}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_step(arch: ZooArch, key: str, root: Path = ZOO_DIR, nncf: bool = True,
                 log: Callable[[str], None] = print, command: str = "tools/zoo.py") -> dict[str, Any]:
    """The config recipe (and NNCF) on the export through ptqdet.recipe_bench.run_recipes, with
    the results header (date, CPU, command, whether the machine was idle as it started)."""
    from .peers import NNCF_PYTHON, nncf_peers
    from .recipe_bench import run_recipes
    from .recipes import Recipe
    from .report import machine_idle, results_header

    header = results_header(command, machine_idle())

    cfg = ptq_config(arch, root)
    peers = nncf_peers(("performance",)) if nncf and NNCF_PYTHON.is_file() else []
    recipe = Recipe(CONFIG_RECIPE_NAME, {}, None, "the config's PTQ section as it is")
    rows = run_recipes(cfg, [recipe], root / "runs" / arch.name, [1], progress=True, log=log, peers=peers)
    return {"key": key, "done": True, "header": header, "rows": [dataclasses.asdict(r) for r in rows],
            "nncf": "measured" if peers else f"not measured: {NNCF_PYTHON} missing (make nncf-venv)"}


# ---------------------------------------------------------------------------- rows and tables

def _ratio(latency: dict, threads: int, num: str, den: str) -> float | None:
    times = latency.get(threads) or latency.get(str(threads)) or {}
    return round(times[num] / times[den], 3) if times.get(num) and times.get(den) else None


def zoo_row(arch: ZooArch, results: dict[str, Any], header: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trained fields of arch's row of docs/results/models.json from its results."""
    rows = results.get("measure", {}).get("rows", [])
    ours = next((r for r in rows if r["recipe"] == CONFIG_RECIPE_NAME), None)
    nncf = next((r for r in rows if r["recipe"].startswith("NNCF")), None)
    train = results.get("train", {})
    zoo = {"title": arch.title, "reused": arch.reuse, "train_config": str(arch.train_config),
           "ptq_config": str(arch.ptq_config), "epochs_done": train.get("epochs_done"),
           "epochs": train.get("epochs"), "train_minutes": train.get("minutes"),
           "stopped_by_budget": train.get("stopped_by_budget"), "note": arch.note, "status": status(results),
           "header": header}
    fields: dict[str, Any] = {"fp32_map": None, "int8_map_sim": None, "int8_map_openvino": None,
                              "float_layers": None, "quantizable_layers": None}
    if ours:
        fields.update(fp32_map=ours["fp32_map"], int8_map_sim=ours["sim_map"], int8_map_openvino=ours["runtime_map"],
                      float_layers=ours["float_layers"], quantizable_layers=ours["total_layers"])
        zoo["quantizable_layers"] = ours["total_layers"]
        latency = ours["latency"]
        zoo.update(ptq_seconds=ours["ptq_seconds"], int8_fp32=_ratio(latency, 1, "INT8", "FP32"),
                   int8_bf16=_ratio(latency, 1, "INT8", "FP32 (bf16)"), latency_ms=latency.get("1", latency.get(1)),
                   error=ours["error"])
    if nncf:
        zoo["nncf"] = {"map": nncf["runtime_map"], "int8_fp32": _ratio(nncf["latency"], 1, "INT8", "FP32"),
                       "latency_ms": nncf["latency"].get("1", nncf["latency"].get(1)), "error": nncf["error"]}
    return {**fields, "zoo": zoo}


def merge_rows(rows: list[dict[str, Any]], trained: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """rows (docs/results/models.json) with each arch's trained fields replaced from `trained`
    (arch -> zoo_row); an arch without a coverage row gets a row of its own."""
    out = []
    for r in rows:
        fields = dict(trained.get(r["arch"], {}))
        if r.get("quantizable_layers") is not None:  # the coverage model's count stands (same architecture)
            fields.pop("quantizable_layers", None)
        out.append({**r, **fields})
    known = {r["arch"] for r in rows}
    out += [{"arch": name, "stages": {}, **fields} for name, fields in trained.items() if name not in known]
    return out


# ---------------------------------------------------------------------------- analysis

def needs_analysis(measure: dict[str, Any]) -> bool:
    """Whether the config recipe's INT8 (simulated or OpenVINO) is more than MAX_GAP below FP32."""
    ours = next((r for r in measure.get("rows", []) if r["recipe"] == CONFIG_RECIPE_NAME), None)
    if not ours or ours["fp32_map"] is None:
        return False
    worst = min(v for v in (ours["sim_map"], ours["runtime_map"], ours["fp32_map"]) if v is not None)
    return ours["fp32_map"] - worst > MAX_GAP


def analysis_step(arch: ZooArch, key: str, root: Path = ZOO_DIR) -> dict[str, Any]:
    """ptqdet's analysis (analysis.py's analyze) with target FP32 - MAX_GAP: the layers kept in
    float to come within 1 point, on OpenVINO at 1 thread."""
    from .analysis.results import AnalysisOptions
    from .analysis.stages import analyze

    out = root / "runs" / arch.name / "analysis"
    cfg = dataclasses.replace(ptq_config(arch, root), save_dir=out, get_target_quant_model=True, target_metric=None)
    result = analyze(cfg, AnalysisOptions(save_dir=out, threads=1, rank_modes=("quantize",), max_drop=MAX_GAP,
                                          deploy_threads=1))
    record: dict[str, Any] = {"key": key, "done": True, "fp32_map": result.fp32_map, "int8_map": result.int8_map}
    if result.target:
        t = result.target
        record.update(float_layers=t.num_skipped, verified_map=t.verified_map, deployed_map=t.deployed_map,
                      met=t.met, int8_fp32=t.ratio, analyzed_config=str(result.files.get("analyzed_config")))
    return record


# ---------------------------------------------------------------------------- one architecture

def more_budget(results: dict[str, Any], step: str, max_minutes: float | None) -> bool:
    """Whether a training stopped by its budget may go on: a larger (or no) budget now."""
    train = results.get(step, {}) if step == "train" else {}
    if not train.get("stopped_by_budget"):
        return False
    return max_minutes is None or max_minutes > train.get("minutes", 0) + 1.0

STEPS = ("train", "export", "measure", "analysis")


def step_key(arch: ZooArch, step: str, key: str, results: dict[str, Any]) -> str | None:
    """The key `step` is cached under (None: the step it needs is not done): train by the
    training key, export by the weights it exports, measure and analysis by the export and the
    ptqdet config."""
    if step == "train":
        return key
    train = results.get("train", {})
    if not step_done(results, "train", key):
        return None
    export_key = hashlib.sha256(f"{key}|{train.get('weights')}|{train.get('epochs_done')}".encode()).hexdigest()[:16]
    if step == "export":
        return export_key
    if not step_done(results, "export", export_key):
        return None
    return measure_key(arch, export_key) if step == "measure" or step_done(results, "measure", measure_key(
        arch, export_key)) else None


def run_arch(arch: ZooArch, steps: tuple[str, ...] = STEPS, root: Path = ZOO_DIR, max_minutes: float | None = 45.0,
             nncf: bool = True, data_digest: str | None = None, log: Callable[[str], None] = print,
             command: str = "tools/zoo.py") -> dict[str, Any]:
    """The steps of one architecture, each skipped when its record (outputs/zoo/<name>.json) has
    its current key; the record is saved after every step."""
    key = train_key(arch, data_digest or dataset_digest())
    results = read_results(arch, root)
    if arch.reuse:  # trained earlier by tools/train_demo.py: its export is the model
        results["train"] = {"key": key, "done": True, "reused": arch.reuse, "weights": None}
        results["export"] = {"key": step_key(arch, "export", key, results), "done": True, "export": arch.reuse}
    bodies = {"train": lambda k: train_step(arch, k, root, max_minutes),
              "export": lambda k: export_step(arch, k, Path(results["train"]["weights"]), key, root),
              "measure": lambda k: measure_step(arch, k, root, nncf, log, command),
              "analysis": lambda k: analysis_step(arch, k, root)}
    for step in STEPS:
        current = step_key(arch, step, key, results)
        if current is None:
            break
        if step not in steps or (step_done(results, step, current) and not more_budget(results, step, max_minutes)):
            continue
        if step == "analysis" and not needs_analysis(results.get("measure", {})):
            continue
        log(f"{arch.name}: {step}")
        try:
            results[step] = bodies[step](current)
        except Exception as exc:  # noqa: BLE001 - one architecture failing is its result, the others go on
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            results[step] = {"key": current, "done": False, "error": error}
            log(f"{arch.name}: {step} failed: {results[step]['error']}")
        save_results(arch, results, root)
        if not results[step].get("done"):
            break
    return results


# ---------------------------------------------------------------------------- docs

ZOO_RESULTS = "zoo"  # docs/results/zoo.md
ZOO_TITLE = "The trained zoo: FP32 and INT8 of each architecture trained on the demo shapes"


def status(results: dict[str, Any]) -> str:
    """Where an architecture's run stands, in a few words (the notes under the trained table)."""
    failed = [f"{step} failed: {results[step]['error']}" for step in STEPS if results.get(step, {}).get("error")]
    if failed:
        return failed[0]
    train = results.get("train", {})
    if not train:
        return "not run yet"
    trained = "" if train.get("reused") else (f"{train.get('epochs_done')} of {train.get('epochs')} epochs in "
                                              f"{train.get('minutes')} CPU min")
    if train.get("stopped_by_budget"):
        trained += " (stopped by the budget)"
    curve = train.get("curve") or []
    if curve:
        trained += f", mAP {100 * curve[-1]['map']:.1f} during training"
    if results.get("measure", {}).get("done"):
        return "measured" + (f" ({trained})" if trained else "")
    return ("training: " if not train.get("done") else "trained, not measured yet: ") + trained


def current_results(arch: ZooArch, results: dict[str, Any], key: str) -> dict[str, Any]:
    """The steps of `results` recorded under the keys arch's configs give today (train key `key`):
    a record of an earlier config (another backbone, schedule, recipe) is dropped, not shown."""
    out: dict[str, Any] = {}
    for step in STEPS:
        if step not in results:
            continue
        current = step_key(arch, step, key, out)
        if current is None or results[step].get("key") != current:
            break
        out[step] = results[step]
    return out


def collect_rows(archs: tuple[ZooArch, ...] | list[ZooArch] = ZOO, root: Path = ZOO_DIR,
                 data_digest: str | None = None) -> dict[str, dict[str, Any]]:
    """arch -> zoo_row of every arch with a record in `root` (its trained fields once measured,
    its status always), from the records of its current configs only. An arch with no record
    there (a fresh checkout, a worktree, another machine) is left out: its row of
    docs/results/models.json stays as it is rather than turn into "not run yet"."""
    out = {}
    digest = data_digest or dataset_digest()
    for arch in archs:
        if not results_path(arch, root).is_file():
            continue
        results = current_results(arch, read_results(arch, root), train_key(arch, digest))
        row = zoo_row(arch, results, header=results.get("measure", {}).get("header"))
        row["zoo"]["analysis"] = results.get("analysis")
        out[arch.name] = row
    return out


def write_docs(trained: dict[str, dict[str, Any]]) -> list[Path]:
    """Merge the trained rows into docs/results/models.json, then docs/models.md (ptqdet.coverage)
    and docs/results/zoo.md, each table under the results headers its rows were measured under."""
    from . import coverage
    from .report import RESULTS_DIR

    rows = json.loads(coverage.RESULTS_JSON.read_text()) if coverage.RESULTS_JSON.is_file() else []
    merged = merge_rows(rows, trained)
    atomic_write_text(coverage.RESULTS_JSON, json.dumps(merged, indent=1) + "\n")
    coverage.write_docs(coverage.RESULTS_JSON, coverage.MODELS_MD)
    text = f"# {ZOO_TITLE}\n\n{coverage.trained_headers(merged)}\n{coverage.zoo_markdown(merged)}"
    zoo_md = atomic_write_text(RESULTS_DIR / f"{ZOO_RESULTS}.md", text)
    return [coverage.RESULTS_JSON, coverage.MODELS_MD, zoo_md]
