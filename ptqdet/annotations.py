"""Small COCO annotation-file utilities (e.g. a FastEvalDataset from a full val set).

    python -m ptqdet.annotations --anno dataset/coco/annotations/instances_val2017.json \
        --count 500 --out dataset/coco/annotations/instances_val2017_first500.json
"""
from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anno", type=Path, required=True, help="COCO annotation file to take images from")
    parser.add_argument("--count", type=int, required=True, help="number of images (the first ones)")
    parser.add_argument("--out", type=Path, required=True, help="annotation file to write")
    args = parser.parse_args(argv)
    print(write_subset(args.anno, args.out, args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
