"""Small COCO annotation-file utilities (e.g. a FastEvalDataset from a full val set).

    python -m ptqdet.annotations --anno dataset/coco/annotations/instances_val2017.json \
        --count 500 --out dataset/coco/annotations/instances_val2017_first500.json
    python -m ptqdet.annotations --anno ../shared/coco_mini/annotations/instances_train2017_mini.json \
        --split 64 --out dataset/coco_mini/annotations/instances_calib.json \
        --out_rest dataset/coco_mini/annotations/instances_eval.json
    python -m ptqdet.annotations --coco_mini ../shared/coco_mini --out dataset/coco_mini   # make coco-mini
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from .report import atomic_write_text


def write_subset(anno: Path, out: Path, count: int) -> Path:
    """An annotation file with the first `count` images of `anno` and their boxes."""
    coco = json.loads(Path(anno).read_text())
    keep = {im["id"] for im in coco["images"][:count]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    info = coco.get("info") or {}
    coco["info"] = {**info, "description": f"{info.get('description', anno.name)}, first {count} images"}
    return atomic_write_text(Path(out), json.dumps(coco, sort_keys=True, separators=(",", ":")))


def with_images(coco: dict, keep: set, description: str) -> dict:
    info = coco.get("info") or {}
    return {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
            "info": {**info, "description": f"{info.get('description', '')}, {description}".lstrip(", ")}}


def write_split(anno: Path, out: Path, out_rest: Path, count: int) -> tuple[Path, Path]:
    """Split `anno` into two disjoint annotation files: `count` images spread evenly over the
    images sorted by id (every k-th one, the same for every run) and the rest."""
    coco = json.loads(Path(anno).read_text())
    ids = sorted(im["id"] for im in coco["images"])
    if not 0 < count < len(ids):
        raise ValueError(f"{anno}: cannot take {count} of its {len(ids)} images and keep some for the rest")
    picked = {ids[int(i * len(ids) / count)] for i in range(count)}
    rest = set(ids) - picked
    dump = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"))
    return (atomic_write_text(Path(out), dump(with_images(coco, picked, f"{count} images spread by id"))),
            atomic_write_text(Path(out_rest), dump(with_images(coco, rest, f"the other {len(rest)} images"))))


COCO_MINI_ANNO = "annotations/instances_train2017_mini.json"


def prepare_coco_mini(src: Path, out: Path, calib: int = 64, fast: int = 40) -> Path:
    """Lay out coco_mini (`src`: train2017/ and COCO_MINI_ANNO) under `out` for
    configs/coco_mini/: train2017 as a symlink, `calib` calibration images
    (instances_calib.json) and the rest for evaluation (instances_eval.json), disjoint,
    and the first `fast` evaluation images (instances_eval_fast.json). Returns `out`."""
    src, out = Path(src), Path(out)
    if not (src / "train2017").is_dir() or not (src / COCO_MINI_ANNO).is_file():
        raise FileNotFoundError(f"coco_mini not found at {src} (needs train2017/ and {COCO_MINI_ANNO})")
    annotations = out / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    link = out / "train2017"
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to((src / "train2017").resolve(), target_is_directory=True)
    _, rest = write_split(src / COCO_MINI_ANNO, annotations / "instances_calib.json",
                          annotations / "instances_eval.json", calib)
    write_subset(rest, annotations / "instances_eval_fast.json", fast)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anno", type=Path, help="COCO annotation file to take images from")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--count", type=int, help="number of images (the first ones)")
    group.add_argument("--split", type=int,
                       help="number of images spread evenly by id into --out; the rest go to --out_rest")
    group.add_argument("--coco_mini", type=Path,
                       help="coco_mini folder (../shared/coco_mini): lay it out under --out (a folder) "
                            "as `make coco-mini` does")
    parser.add_argument("--out", type=Path, required=True, help="annotation file to write (--coco_mini: folder)")
    parser.add_argument("--out_rest", type=Path, help="with --split: annotation file of the other images")
    args = parser.parse_args(argv)
    if args.coco_mini is not None:
        try:
            print(prepare_coco_mini(args.coco_mini, args.out))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.anno is None:
        parser.error("--count and --split need --anno")
    if args.split is not None:
        if args.out_rest is None:
            parser.error("--split needs --out_rest")
        print(*write_split(args.anno, args.out, args.out_rest, args.split), sep="\n")
        return 0
    print(write_subset(args.anno, args.out, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
