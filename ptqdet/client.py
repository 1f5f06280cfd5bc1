"""COCO mAP of a model run through PaddleDetection's own deployment client (deploy/python/infer.py).

The client is what users run our INT8 models with (../shared/clients/). This runs it as a
subprocess on the images ptqdet evaluates (a temporary folder of symlinks to exactly the
dataset's images), reads its `bbox.json`, maps its records back to the dataset (the client,
without --use_coco_category, numbers images by their position in its folder listing, which is
a set and so in no stable order, and gives class indices: records are matched by `file_name`
and class indices mapped through the dataset's category order) and scores them with the
pycocotools call ptqdet's own evaluation makes, on the same annotation file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, PTQDetConfig
from .data import build_source
from .metrics import EvalResult, coco_map_of_records

CLIENT_SUBDIR = Path("shared") / "clients" / "PaddleDetection_deploy" / "python"


class ClientError(ConfigError):
    """The client could not run or its output cannot be mapped; the message says why."""


def default_client_dir() -> Path:
    """../shared/clients/PaddleDetection_deploy/python next to the repository (env PTQDET_CLIENT_DIR)."""
    env = os.environ.get("PTQDET_CLIENT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / CLIENT_SUBDIR


@dataclass
class DatasetImages:
    """The images a dataset of the config evaluates, and how to map client output back to it."""

    anno_file: Path
    files: dict[str, Path]  # file name (as the client reports it) -> image path
    image_ids: dict[str, int]  # file name -> the dataset's image id
    clsid2catid: dict[int, int]  # class index (the model's output) -> category id


def dataset_images(cfg: PTQDetConfig, dataset_key: str = "EvalDataset") -> DatasetImages:
    """The images ptqdet evaluates for `dataset_key` (ppdet's COCODataSet skips images
    without boxes: those are not fed to the client either)."""
    if cfg.metric != "COCO":
        raise ClientError(f"{cfg.path}: the client comparison needs metric: COCO (got {cfg.metric})")
    dataset = build_source(cfg, dataset_key).dataset
    files: dict[str, Path] = {}
    ids: dict[str, int] = {}
    for record in dataset.roidbs:
        path = Path(record["im_file"])
        if path.name in files:
            raise ClientError(f"{dataset_key}: two images named {path.name}; the client reports file names only")
        files[path.name] = path.resolve()
        ids[path.name] = int(record["im_id"][0])
    return DatasetImages(anno_file=Path(dataset.get_anno()), files=files, image_ids=ids,
                         clsid2catid={int(v): int(k) for k, v in dataset.catid2clsid.items()})


def link_images(files: dict[str, Path], folder: Path) -> Path:
    """A folder holding exactly these images, as symlinks named by their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        (folder / name).symlink_to(path)
    return folder


def client_command(model_dir: Path, image_dir: Path, output_dir: Path, mkldnn: bool, threads: int,
                   client_dir: Path) -> list[str]:
    return [sys.executable, str(client_dir / "infer.py"), f"--model_dir={Path(model_dir).resolve()}",
            f"--image_dir={Path(image_dir).resolve()}", "--device=CPU", f"--enable_mkldnn={mkldnn}",
            f"--cpu_threads={threads}", "--save_results", "--save_images=False",
            f"--output_dir={Path(output_dir).resolve()}"]


def run_client(command: list[str], output_dir: Path, timeout: float | None = None) -> list[dict[str, Any]]:
    """Run the client; its bbox.json records (none when it wrote no bbox.json: no detection)."""
    env = {**os.environ, "GLOG_minloglevel": "2"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ClientError(f"client {command[1]} failed (exit {proc.returncode}): {last}")
    bbox = Path(output_dir) / "bbox.json"
    return json.loads(bbox.read_text()) if bbox.is_file() else []


def to_dataset_records(records: list[dict[str, Any]], images: DatasetImages) -> list[dict[str, Any]]:
    """Client records (image_id = folder position, category_id = class index) with the
    dataset's image ids (by file_name) and category ids (by the dataset's category order)."""
    out = []
    for r in records:
        name = r["file_name"]
        if name not in images.image_ids:
            raise ClientError(f"client reported {name!r}, which is not an evaluation image")
        clsid = int(r["category_id"])
        if clsid not in images.clsid2catid:
            raise ClientError(f"client reported class index {clsid}; the dataset has {len(images.clsid2catid)} classes")
        out.append({"image_id": images.image_ids[name], "category_id": images.clsid2catid[clsid],
                    "bbox": [float(v) for v in r["bbox"]], "score": float(r["score"])})
    return out


def client_map(cfg: PTQDetConfig, model_dir: Path, mkldnn: bool, dataset_key: str = "EvalDataset",
               threads: int | None = None, client_dir: Path | None = None,
               timeout: float | None = None) -> EvalResult:
    """COCO mAP of `model_dir` run through the client on the config's `dataset_key` images."""
    from .model import default_threads

    client_dir = Path(client_dir) if client_dir is not None else default_client_dir()
    if not (client_dir / "infer.py").is_file():
        raise ClientError(f"PaddleDetection's client not found: {client_dir / 'infer.py'} (set PTQDET_CLIENT_DIR)")
    images = dataset_images(cfg, dataset_key)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ptqdet_client_") as tmp:
        image_dir = link_images(images.files, Path(tmp) / "images")
        output_dir = Path(tmp) / "out"
        command = client_command(model_dir, image_dir, output_dir, mkldnn, threads or default_threads(), client_dir)
        records = to_dataset_records(run_client(command, output_dir, timeout), images)
    value, stats = coco_map_of_records(images.anno_file, records)
    return EvalResult(map=value, stats=stats, images=len(images.files), seconds=time.perf_counter() - start,
                      dataset=dataset_key)
