"""The held-out split of EvalDataset: the images the target search may use, and the images
that verify its model, disjoint, from the one val set a user has (no extra file to write).

Rule (deterministic, documented in docs/analysis.md): EvalDataset's images sorted by image id;
those also in FastEvalDataset (the ranking set, matched by file name) are search images; of
the others, every second one (positions 1, 3, 5, ... of that sorted list) is held out for the
verification, the rest are search images. The demo: 200 val images, FastEval = the first 40 ->
120 search images (FastEval's 40 among them) and 80 held-out ones.

Only COCO datasets are split (their annotation file lists the images); a VOC EvalDataset keeps
search and verification on the same images, and the report says so.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from ..annotations import with_images
from ..config import PTQDetConfig
from ..data import BatchSource, build_source, dataset_paths
from ..report import atomic_write_text

SEARCH, HELDOUT = "search", "heldout"


@dataclass(frozen=True)
class EvalSplit:
    """Two disjoint annotation files of EvalDataset (None: not split, both are EvalDataset)."""

    search_anno: Path | None
    heldout_anno: Path | None
    search_images: list[str]  # file names
    heldout_images: list[str]

    @property
    def split(self) -> bool:
        return self.search_anno is not None

    def describe(self) -> str:
        """One paragraph for analysis.md."""
        if not self.split:
            return ("EvalDataset was not split (not a COCO dataset, or too few images): the target search and the "
                    "verification both used all of its images (no held-out images).")
        return (f"Search images: {len(self.search_images)} of EvalDataset (FastEvalDataset's images and, of the "
                f"others sorted by image id, those at even positions); held-out images: "
                f"{len(self.heldout_images)} (the odd positions), never used by the ranking or the search. "
                f"They do not overlap. Lists: `{self.search_anno.name}`, `{self.heldout_anno.name}` "
                f"in the analysis' work folder.")


def _fast_file_names(cfg: PTQDetConfig) -> set[str]:
    if not cfg.has_dataset("FastEvalDataset"):
        return set()
    anno = dataset_paths(cfg.ppdet["FastEvalDataset"]).get("anno_path")
    if anno is None or not anno.is_file() or anno.suffix != ".json":
        return set()
    return {Path(im["file_name"]).name for im in json.loads(anno.read_text())["images"]}


def split_ids(ids_and_names: list[tuple[int, str]], ranking_names: set[str]) -> tuple[set[int], set[int]]:
    """(search ids, held-out ids) by the module's rule: ranking images are search images, the
    others alternate by sorted id, starting with a search image."""
    others = sorted((i, n) for i, n in ids_and_names if Path(n).name not in ranking_names)
    heldout = {i for pos, (i, _) in enumerate(others) if pos % 2 == 1}
    return {i for i, _ in ids_and_names} - heldout, heldout


def split_eval(cfg: PTQDetConfig, work_dir: Path) -> EvalSplit:
    """Write the search and held-out annotation files into work_dir (same content every run)."""
    paths = dataset_paths(cfg.ppdet["EvalDataset"])
    anno = paths.get("anno_path")
    if cfg.metric != "COCO" or anno is None or anno.suffix != ".json":
        return EvalSplit(None, None, [], [])
    coco = json.loads(anno.read_text())
    images = [(im["id"], im["file_name"]) for im in coco["images"]]
    search, heldout = split_ids(images, _fast_file_names(cfg))
    if not heldout:
        return EvalSplit(None, None, [n for _, n in images], [])
    out = {}
    for name, keep in ((SEARCH, search), (HELDOUT, heldout)):
        text = json.dumps(with_images(coco, keep, f"{name} split of {anno.name}"), sort_keys=True,
                          separators=(",", ":"))
        out[name] = atomic_write_text(work_dir / f"eval_{name}.json", text)
    names = {i: n for i, n in images}
    return EvalSplit(out[SEARCH], out[HELDOUT], sorted(names[i] for i in search), sorted(names[i] for i in heldout))


def split_source(cfg: PTQDetConfig, anno: Path | None) -> BatchSource:
    """EvalDataset restricted to the images of `anno` (None: all of EvalDataset)."""
    if anno is None:
        return build_source(cfg, "EvalDataset")
    original = cfg.ppdet["EvalDataset"]
    subset = copy.copy(original)
    subset.anno_path = str(Path(anno).resolve())  # os.path.join(dataset_dir, absolute) is the absolute path
    cfg.ppdet["EvalDataset"] = subset
    try:
        return build_source(cfg, "EvalDataset")
    finally:
        cfg.ppdet["EvalDataset"] = original
