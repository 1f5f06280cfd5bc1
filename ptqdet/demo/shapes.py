"""Deterministic generator of the demo "shapes" detection dataset, in COCO format.

Each image holds a few filled geometric shapes (6 classes) of varied size, colour,
rotation and aspect ratio, possibly overlapping, on a textured, noisy background.
The same seed always gives byte-identical annotation files.

    python -m ptqdet.demo.shapes --out dataset/shapes
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..annotations import write_subset
from ..report import atomic_write_text

CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross", "ring")
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((320, 320), (384, 288), (288, 384), (352, 352), (416, 320))
DEFAULT_SPLITS: dict[str, int] = {"train": 2400, "val": 200, "calib": 64}
# what ptqdet's demo configs and the tests read (calibration and evaluation); train is for training
EVAL_SPLITS: dict[str, int] = {s: DEFAULT_SPLITS[s] for s in ("val", "calib")}
FAST_VAL_IMAGES = 40


@dataclass(frozen=True)
class ShapeObject:
    category_id: int  # 1-based, index into CLASSES + 1
    bbox: tuple[float, float, float, float]  # x, y, w, h (COCO)
    area: float


def _unit_polygon(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) of a shape centred at 0 with radius about 1. Several outlines = holes (ring)."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return [np.stack([np.cos(t), np.sin(t)], 1)]
    if kind == "rectangle":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)]
    if kind == "triangle":
        t = np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        return [np.stack([np.cos(t), -np.sin(t)], 1)]
    if kind == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    if kind == "cross":
        a = float(rng.uniform(0.28, 0.4))
        return [np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                          [-a, a], [-1, a], [-1, -a], [-a, -a]], float)]
    if kind == "ring":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        inner = float(rng.uniform(0.45, 0.6))
        circle = np.stack([np.cos(t), np.sin(t)], 1)
        return [circle, circle * inner]
    raise ValueError(f"unknown shape kind {kind!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-contrast textured background: colour gradient, blurred blobs, stripes and noise."""
    base = rng.uniform(40, 200, 3)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(-1, 1, 2)
    grad = (gx * direction[0] + gy * direction[1]) / max(h, w)
    img = base[None, None, :].astype(np.float32) + grad[..., None] * rng.uniform(-40, 40, 3)[None, None, :]
    low = cv2.resize(rng.normal(0, 1, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.float32),
                     (w, h), interpolation=cv2.INTER_CUBIC)
    img += low * rng.uniform(5, 20)
    if rng.random() < 0.5:  # stripes texture
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, np.pi)
        phase = (gx * np.cos(angle) + gy * np.sin(angle)) * 2 * np.pi / period
        img += (np.sin(phase) * rng.uniform(4, 12))[..., None]
    img += rng.normal(0, rng.uniform(3, 12), (h, w, 3)).astype(np.float32)
    return img


def _object_size(rng: np.random.Generator, short_side: int) -> float:
    """Object radius in pixels: mostly medium and large, some small (< 32 px across)."""
    u = rng.random()
    if u < 0.15:
        return float(rng.uniform(8, 15))  # small: 16-30 px across
    if u < 0.55:
        return float(rng.uniform(16, 48))  # medium
    return float(rng.uniform(48, short_side * 0.42))  # large


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box's area: how much of either box the other covers."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    smaller = min(a[2] * a[3], b[2] * b[3])
    return inter / smaller if smaller > 0 else 0.0


def render_image(seed: int, split: str, index: int) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw one image; the result depends only on (seed, split, index)."""
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    img = _background(rng, h, w)
    objects: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            radius = _object_size(rng, min(h, w))
            aspect = float(np.exp(rng.uniform(-0.4, 0.4))) if CLASSES[cls] not in ("circle", "ring") else \
                float(np.exp(rng.uniform(-0.2, 0.2)))
            angle = float(rng.uniform(0, 2 * np.pi))
            cx, cy = rng.uniform(radius * 0.6, w - radius * 0.6), rng.uniform(radius * 0.6, h - radius * 0.6)
            outlines = _unit_polygon(CLASSES[cls], rng)
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            scale = np.array([radius * aspect ** 0.5, radius / aspect ** 0.5])
            polys = [((p * scale) @ rot.T + [cx, cy]) for p in outlines]
            x0 = max(int(min(p[:, 0].min() for p in polys)) - 2, 0)
            y0 = max(int(min(p[:, 1].min() for p in polys)) - 2, 0)
            x1 = min(int(max(p[:, 0].max() for p in polys)) + 3, w)
            y1 = min(int(max(p[:, 1].max() for p in polys)) + 3, h)
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            local_polys = [np.round((p - [x0, y0]) * 16).astype(np.int32) for p in polys]
            cv2.fillPoly(mask, [local_polys[0]], 255, cv2.LINE_AA, shift=4)
            if len(polys) > 1:
                cv2.fillPoly(mask, [local_polys[1]], 0, cv2.LINE_AA, shift=4)
            ys, xs = np.nonzero(mask > 127)
            if len(xs) < 12:
                continue
            bbox = (float(x0 + xs.min()), float(y0 + ys.min()),
                    float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
            if any(_overlap(bbox, o.bbox) > 0.3 for o in objects):
                continue
            region = img[y0:y1, x0:x1]
            # a colour that stands out from the local background
            local = region[ys, xs].mean(0)
            for _c in range(10):
                color = rng.uniform(0, 255, 3)
                if np.abs(color - local).sum() > 180:
                    break
            alpha = (mask.astype(np.float32) / 255.0)[..., None]
            shading = color[None, None, :] + rng.normal(0, 6, region.shape)
            img[y0:y1, x0:x1] = region * (1 - alpha) + shading * alpha
            objects.append(ShapeObject(cls + 1, bbox, float(len(xs))))
            break
    return np.clip(img, 0, 255).astype(np.uint8), objects


def generate_split(out_dir: Path, split: str, count: int, seed: int = 0, progress: bool = True) -> Path:
    """Write `out_dir/<split>/*.jpg` and `out_dir/annotations/instances_<split>.json`."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    iterator = range(count)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"shapes/{split}", unit="img", file=sys.stderr)
    for i in iterator:
        img, objects = render_image(seed, split, i)
        name = f"{split}_{i:06d}.jpg"
        cv2.imwrite(str(image_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": i + 1, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for o in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": o.category_id,
                                "bbox": [round(v, 2) for v in o.bbox], "area": round(o.area, 2),
                                "iscrowd": 0, "segmentation": []})
    coco = {"info": {"description": f"ptqdet demo shapes ({split}, seed {seed})"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]}
    anno = out_dir / "annotations" / f"instances_{split}.json"
    atomic_write_text(anno, json.dumps(coco, sort_keys=True, separators=(",", ":")))
    return anno


def generate(out_dir: Path, splits: dict[str, int] | None = None, seed: int = 0,
             progress: bool = True) -> dict[str, Path]:
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    paths = {s: generate_split(out_dir, s, n, seed, progress) for s, n in splits.items()}
    if "val" in paths:
        paths["val_fast"] = write_subset(paths["val"], out_dir / "annotations" / "instances_val_fast.json",
                                         FAST_VAL_IMAGES)
    return paths


def is_complete(out_dir: Path, splits: dict[str, int] | None = None) -> bool:
    """True when every split's annotation file exists with the expected number of images."""
    for split, count in (DEFAULT_SPLITS if splits is None else splits).items():
        anno = out_dir / "annotations" / f"instances_{split}.json"
        if not anno.is_file():
            return False
        try:
            if len(json.loads(anno.read_text())["images"]) != count:
                return False
        except (ValueError, KeyError):
            return False
        if sum(1 for _ in (out_dir / split).glob("*.jpg")) < count:
            return False
    return "val" not in (DEFAULT_SPLITS if splits is None else splits) or \
        (out_dir / "annotations" / "instances_val_fast.json").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("dataset/shapes"),
                        help="output folder (default: dataset/shapes)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    for split, n in DEFAULT_SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"number of {split} images (default {n})")
    parser.add_argument("--splits", nargs="+", choices=list(DEFAULT_SPLITS), default=list(DEFAULT_SPLITS),
                        help=f"the splits to make (default: all). The tests and ptqdet's configs read "
                        f"{' and '.join(EVAL_SPLITS)} only; train is for training (tools/train_demo.py, make zoo)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the dataset is already complete")
    args = parser.parse_args(argv)
    splits = {s: getattr(args, s) for s in args.splits}
    if not args.force and is_complete(args.out, splits):
        print(f"{args.out}: complete, nothing to do (use --force to regenerate)")
        return 0
    start = time.time()
    paths = generate(args.out, splits, args.seed)
    for split, path in paths.items():
        count = splits.get(split, FAST_VAL_IMAGES)
        print(f"{split}: {count} images -> {path}")
    print(f"done in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
