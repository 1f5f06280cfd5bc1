"""COCO and VOC mAP through PaddleDetection's metrics (pycocotools for COCO), and the eval loop."""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import PTQDetConfig
from .data import BatchSource, build_source, feed_from_batch
from .model import Runner
from .postprocess import to_detections
from .stdout import quiet_stdout

COCO_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@dataclass
class EvalResult:
    map: float  # COCO mAP@[.5:.95] or VOC mAP, 0-1
    stats: dict[str, float] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"map": self.map, "stats": self.stats, "images": self.images,
                "seconds": round(self.seconds, 2), "dataset": self.dataset}


def create_metric(cfg: PTQDetConfig, source: BatchSource, output_dir: Path):
    from ppdet.metrics import COCOMetric, VOCMetric

    dataset = source.dataset
    if cfg.metric == "COCO":
        clsid2catid = {v: k for k, v in dataset.catid2clsid.items()}
        return COCOMetric(anno_file=dataset.get_anno(), clsid2catid=clsid2catid, classwise=False,
                          output_eval=str(output_dir), bias=0, IouType="bbox", save_prediction_only=False)
    return VOCMetric(label_list=dataset.get_label_list(), class_num=cfg.num_classes, map_type="11point",
                     classwise=False)


def coco_stats(raw: Any) -> tuple[float, dict[str, float]]:
    """mAP and named stats from pycocotools' 12 summary numbers (None: no detection at all)."""
    if raw is None:  # no detection at all: pycocotools is never called
        return 0.0, dict.fromkeys(COCO_STAT_NAMES, 0.0)
    stats = {n: float(max(v, 0.0)) for n, v in zip(COCO_STAT_NAMES, raw)}
    return stats["mAP"], stats


def coco_map_of_records(anno_file: Path, records: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """COCO bbox mAP of detection records (COCO results format: image_id, category_id, bbox
    xywh, score) against `anno_file`, through the pycocotools call ppdet's COCOMetric makes
    for ptqdet's own evaluation (`cocoapi_eval`)."""
    from ppdet.metrics.coco_utils import cocoapi_eval

    if not records:
        return coco_stats(None)
    with tempfile.TemporaryDirectory(prefix="ptqdet_coco_") as tmp:
        path = Path(tmp) / "bbox.json"
        path.write_text(json.dumps(records))
        with quiet_stdout():
            raw = cocoapi_eval(str(path), "bbox", anno_file=str(anno_file))
    return coco_stats(raw)


class MetricSession:
    """Feeds detections into a ppdet metric; keeps pycocotools' printing out of the way."""

    def __init__(self, cfg: PTQDetConfig, source: BatchSource):
        self._tmp = tempfile.TemporaryDirectory(prefix="ptqdet_eval_")
        self.cfg = cfg
        with quiet_stdout():
            self.metric = create_metric(cfg, source, Path(self._tmp.name))

    def update(self, batch: dict[str, np.ndarray], detections: dict[str, np.ndarray]) -> None:
        self.metric.update(batch, detections)

    def result(self) -> tuple[float, dict[str, float]]:
        with quiet_stdout():
            self.metric.accumulate()
        results = self.metric.get_results()
        self._tmp.cleanup()
        if self.cfg.metric == "COCO":
            return coco_stats(results.get("bbox"))
        value = float(np.asarray(results["bbox"]).ravel()[0])  # ppdet's DetectionMAP: 0-1, at IoU 0.5
        return value, {"mAP": value, "mAP50": value}


class FunctionRunner:
    """A Runner over any `run(feed) -> outputs` function (trial programs, paddleslim's executor)."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]):
        self.run = run


def detect(runner: Runner, cfg: PTQDetConfig, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The runner's detections of one decoded batch (NMS outside the model when the config says so)."""
    return to_detections(runner.run(feed_from_batch(batch, cfg.feed_names)), cfg.nms_outside, cfg.nms)


def map_of_detections(cfg: PTQDetConfig, source: BatchSource, batches: list[dict[str, Any]],
                      detections: list[dict[str, np.ndarray]]) -> float:
    """mAP of detections made elsewhere (one per batch of `batches`, in order), as evaluate()
    computes it: --workers splits one evaluation over its workers and scores it here."""
    if len(batches) != len(detections):
        raise ValueError(f"{len(detections)} detections for {len(batches)} batches")
    session = MetricSession(cfg, source)
    for batch, found in zip(batches, detections):
        session.update(batch, found)
    return session.result()[0]


def evaluate(predictor: Runner, cfg: PTQDetConfig, dataset_key: str = "EvalDataset",
             source: BatchSource | None = None, progress: bool = True, desc: str | None = None,
             batches: list[dict[str, np.ndarray]] | None = None) -> EvalResult:
    """mAP of `predictor` on a whole dataset of the config (never on part of one: the
    annotation file decides which images count, so use FastEvalDataset for a quick number).
    `batches`: the source's batches already decoded (analyses reuse them for every trial)."""
    source = source or build_source(cfg, dataset_key)
    session = MetricSession(cfg, source)
    batches = batches if batches is not None else source.batches()
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, total=source.num_batches(), desc=desc or f"eval {source.key}",
                       unit="batch", leave=False)
    start = time.perf_counter()
    images = 0
    for batch in batches:
        session.update(batch, detect(predictor, cfg, batch))
        images += len(batch["im_id"]) if "im_id" in batch else 1
    value, stats = session.result()
    return EvalResult(map=value, stats=stats, images=images, seconds=time.perf_counter() - start, dataset=source.key)
