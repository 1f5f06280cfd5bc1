import json

import numpy as np
from pycocotools.coco import COCO

from ptqdet.demo.shapes import CLASSES, generate, is_complete, main, render_image


def test_same_seed_gives_identical_annotation_files(tmp_path):
    a = generate(tmp_path / "a", {"val": 12, "calib": 3}, seed=7, progress=False)
    b = generate(tmp_path / "b", {"val": 12, "calib": 3}, seed=7, progress=False)
    for split in ("val", "calib", "val_fast"):
        assert a[split].read_bytes() == b[split].read_bytes()
    c = generate(tmp_path / "c", {"val": 12}, seed=8, progress=False)
    assert c["val"].read_bytes() != a["val"].read_bytes()


def test_annotations_are_valid_coco_and_match_images(tmp_path):
    paths = generate(tmp_path, {"val": 30}, progress=False)
    coco = COCO(str(paths["val"]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 30
    for img in coco.loadImgs(coco.getImgIds()):
        assert (tmp_path / "val" / img["file_name"]).is_file()
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
    assert is_complete(tmp_path, {"val": 30})
    assert not is_complete(tmp_path, {"val": 31})


def test_splits_option_makes_only_those_splits(tmp_path):
    """`make data-eval` (what the tests read): val and calib, no training image."""
    assert main(["--out", str(tmp_path), "--splits", "val", "calib", "--val", "4", "--calib", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "calib", "val"]
    assert is_complete(tmp_path, {"val": 4, "calib": 2}) and not is_complete(tmp_path, {"train": 1})


def test_object_sizes_are_varied_with_some_small():
    sides = []
    sizes = set()
    for i in range(150):
        img, objects = render_image(0, "train", i)
        sizes.add(img.shape[:2])
        sides += [max(o.bbox[2], o.bbox[3]) for o in objects]
    sides = np.array(sides)
    assert (sides < 32).mean() > 0.05  # some small objects
    assert (sides >= 32).mean() > 0.6  # mostly medium and large
    assert sides.max() > 96
    assert len(sizes) >= 3  # several image sizes


def test_fast_val_is_a_prefix_of_val(tmp_path):
    paths = generate(tmp_path, {"val": 50}, progress=False)
    val, fast = (json.loads(paths[k].read_text()) for k in ("val", "val_fast"))
    assert [im["id"] for im in fast["images"]] == [im["id"] for im in val["images"][:40]]
