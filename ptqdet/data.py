"""Data loading over PaddleDetection datasets and transforms, in the main process.

ppdet's own reader runs a prefetch thread; when a transform fails inside it, the main
process waits forever. ptqdet applies the same dataset objects and `EvalReader`
transforms itself, batch by batch, so an error surfaces at once with its traceback.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, PTQDetConfig, use_workspace
from .stdout import quiet_stdout


def decodable(path: str | Path) -> bool:
    """True when OpenCV (what ppdet's Decode uses) can decode the image file (read at 1/8 size)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    return data.size > 0 and cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8) is not None


@dataclass
class BatchSource:
    """A parsed dataset with its sample and batch transforms.

    skip_bad_images: an image that cannot be decoded is skipped with a warning naming it
    (calibration); otherwise it is a ConfigError naming it (evaluation). `skipped` lists them."""

    key: str
    dataset: Any  # ppdet DetDataset
    batch_transforms: Any  # ppdet BatchCompose
    batch_size: int
    skip_bad_images: bool = False
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, max_images: int | None = None) -> int:
        n = len(self) if max_images is None else min(max_images, len(self))
        return (n + self.batch_size - 1) // self.batch_size

    def _samples(self) -> Iterator[dict[str, Any]]:
        """Transformed samples in dataset order; undecodable images skipped or refused."""
        for i in range(len(self)):
            path = self.dataset.roidbs[i].get("im_file")
            if path is not None and not decodable(path):
                if not self.skip_bad_images:
                    raise ConfigError(f"{self.key}: image cannot be decoded: {path}")
                self.skipped.append(str(path))
                print(f"warning: {self.key}: skipped an image that cannot be decoded: {path}", file=sys.stderr)
                continue
            yield self.dataset[i]

    def batches(self, max_images: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield collated batches (dict of numpy arrays) of at most max_images images, in dataset order."""
        n = len(self) if max_images is None else min(max_images, len(self))
        samples: list[dict[str, Any]] = []
        for sample in itertools.islice(self._samples(), n):
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield self.batch_transforms(samples)
                samples = []
        if samples:
            yield self.batch_transforms(samples)


# what ppdet's VOCMetric reads from a batch besides the image
VOC_GT_FIELDS = ("gt_bbox", "gt_class", "difficult")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def dataset_paths(dataset: Any) -> dict[str, Path]:
    """The files and folders a ppdet dataset will read (for up-front checks)."""
    root = Path(str(getattr(dataset, "dataset_dir", "") or ""))
    paths = {}
    image_dir = getattr(dataset, "image_dir", None)
    if isinstance(image_dir, str) and image_dir:
        paths["image_dir"] = root / image_dir
    anno = getattr(dataset, "anno_path", None)
    if isinstance(anno, str) and anno:
        paths["anno_path"] = root / anno
    return paths


def dataset_images(dataset: Any) -> list[Path]:
    """The image files a ppdet dataset reads: the images its COCO annotation names, the files of
    a VOC list, or the images of an ImageFolder's folder (sorted)."""
    paths = dataset_paths(dataset)
    image_dir, anno = paths.get("image_dir"), paths.get("anno_path")
    if anno is not None and anno.is_file() and anno.suffix == ".json":
        try:
            images = json.loads(anno.read_text()).get("images", [])
        except (ValueError, AttributeError):
            return []
        root = image_dir if image_dir is not None else anno.parent
        return sorted(root / str(im.get("file_name", "")) for im in images if isinstance(im, dict))
    if anno is not None and anno.is_file():  # VOC: "image annotation" per line, relative to dataset_dir
        root = Path(str(getattr(dataset, "dataset_dir", "") or ""))
        return sorted(root / line.split()[0] for line in anno.read_text().splitlines() if line.strip())
    return folder_images(image_dir) if image_dir is not None and image_dir.is_dir() else []


def dataset_digest(cfg: PTQDetConfig, keys: tuple[str, ...]) -> str:
    """What results computed on the config's datasets `keys` depend on (hex sha256): each
    dataset's folders, its annotation file's bytes, and the name, size and modification time
    of every image it reads (a changed, added or removed image changes the digest)."""
    digest = hashlib.sha256()
    for key in keys:
        if not cfg.has_dataset(key):
            continue
        dataset = cfg.ppdet[key]
        digest.update(f"{key}:{type(dataset).__name__}:{sorted(dataset_paths(dataset).items())}".encode())
        anno = dataset_paths(dataset).get("anno_path")
        if anno is not None and anno.is_file():
            digest.update(anno.read_bytes())
        for image in dataset_images(dataset):
            stat = image.stat() if image.is_file() else None
            digest.update(f"{image}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def folder_images(folder: Path) -> list[Path]:
    """The image files of a folder and its subfolders, sorted (an ImageFolder dataset)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_file(what: str, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{what} {'is not a file' if path.exists() else 'does not exist'}: {path}")


def _read_coco(where: str, anno: Path) -> dict:
    """The annotation file as a COCO dict with a non-empty 'images' list; ConfigError otherwise."""
    _check_file(f"{where}.anno_path", anno)
    text = anno.read_text(errors="replace")
    if not text.strip():
        raise ConfigError(f"{where}.anno_path is empty: {anno}")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}.anno_path is not JSON ({exc}): {anno}") from exc
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ConfigError(f"{where}.anno_path is not a COCO annotation file (no 'images' list): {anno}")
    if not coco["images"]:
        raise ConfigError(f"{where}.anno_path holds no images: {anno}")
    if not all(isinstance(im, dict) and {"id", "file_name"} <= im.keys() for im in coco["images"]):
        raise ConfigError(f"{where}.anno_path is not a COCO annotation file (an image without id or "
                          f"file_name): {anno}")
    return coco


def _check_coco(where: str, paths: dict[str, Path], need_annotations: bool) -> None:
    coco = _read_coco(where, paths["anno_path"])
    if need_annotations and not (isinstance(coco.get("annotations"), list) and coco.get("categories")):
        raise ConfigError(f"{where}.anno_path has no boxes ('annotations' and 'categories'), which evaluation "
                          f"needs: {paths['anno_path']}")
    image_dir = paths.get("image_dir", Path())
    missing = [str(image_dir / im["file_name"]) for im in coco["images"]
               if not (image_dir / str(im["file_name"])).is_file()]
    if missing:
        raise ConfigError(f"{where}.anno_path refers to {len(missing)} image(s) that do not exist, "
                          f"e.g. {missing[0]}: {paths['anno_path']}")


def _check_voc(where: str, dataset: Any, paths: dict[str, Path], need_annotations: bool) -> None:
    root = Path(str(getattr(dataset, "dataset_dir", "") or ""))
    files_root = paths.get("image_dir", root)  # the file list names images and XMLs under image_dir
    anno = paths["anno_path"]
    _check_file(f"{where}.anno_path", anno)
    lines = [line.split() for line in anno.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{where}.anno_path is empty: {anno}")
    if any(len(parts) != 2 for parts in lines):
        raise ConfigError(f"{where}.anno_path is not a VOC file list ('image xml' per line): {anno}")
    missing = [str(files_root / name) for parts in lines for name in parts if not (files_root / name).is_file()]
    if missing:
        raise ConfigError(f"{where}.anno_path refers to {len(missing)} file(s) that do not exist, "
                          f"e.g. {missing[0]}: {anno}")
    label_list = getattr(dataset, "label_list", None)
    if need_annotations and not label_list:
        raise ConfigError(f"{where}.label_list is not set: VOC evaluation needs the class names file")
    if label_list:
        _check_file(f"{where}.label_list", root / label_list)


def check_dataset(cfg: PTQDetConfig, key: str, need_annotations: bool = True) -> None:
    """Raise ConfigError naming the key and path when a dataset cannot be read: a missing
    folder or file, an annotation file that is empty, not JSON, not COCO (or not a VOC file
    list), without images, or naming images that do not exist."""
    if not cfg.has_dataset(key):
        raise ConfigError(f"{cfg.path}: missing dataset {key!r}")
    dataset = cfg.ppdet[key]
    kind = type(dataset).__name__
    where = f"{cfg.path}: {key}"
    paths = dataset_paths(dataset)
    if "image_dir" in paths and not paths["image_dir"].is_dir():
        state = "is not a folder" if paths["image_dir"].exists() else "does not exist"
        raise ConfigError(f"{where}.image_dir {state}: {paths['image_dir']}")
    if kind == "ImageFolder":
        if need_annotations:
            raise ConfigError(f"{where}: an ImageFolder has no boxes; evaluation needs a COCO or VOC dataset")
        if "image_dir" not in paths:
            raise ConfigError(f"{where}.image_dir is not set: an ImageFolder needs its folder of images")
        if not folder_images(paths["image_dir"]):
            raise ConfigError(f"{where}.image_dir holds no images: {paths['image_dir']}")
        return
    if "anno_path" not in paths:
        raise ConfigError(f"{where}: anno_path is not set")
    if kind == "VOCDataSet":
        _check_voc(where, dataset, paths, need_annotations)
    else:
        _check_coco(where, paths, need_annotations)
    metric = "VOC" if kind == "VOCDataSet" else "COCO"
    if need_annotations and metric != cfg.metric:
        raise ConfigError(f"{where} is a {kind} but metric is {cfg.metric}: set metric: {metric} "
                          f"(or use a {'VOCDataSet' if cfg.metric == 'VOC' else 'COCODataSet'})")


def build_source(cfg: PTQDetConfig, key: str, batch_size: int | None = None, images_only: bool = False) -> BatchSource:
    """Parse dataset `key` (EvalDataset, FastEvalDataset, TrainDataset) with EvalReader's transforms.

    images_only: read only the images, not the boxes (calibration). Loading boxes for
    calibration breaks batching when images have different numbers of objects.
    """
    from ppdet.core.workspace import create

    use_workspace(cfg)
    check_dataset(cfg, key, need_annotations=not images_only)
    dataset = cfg.ppdet[key]
    if images_only and hasattr(dataset, "data_fields"):
        dataset.data_fields = ["image"]
        if hasattr(dataset, "allow_empty"):  # images without boxes count too (ppdet drops them), after the others
            dataset.allow_empty = True
    reader = create("EvalReader")
    if not images_only and cfg.metric == "VOC":
        # ppdet's VOC metric reads the boxes from the batch; they differ in number per image,
        # so they stay per-image lists (what PaddleDetection's VOC configs ask with collate_batch: false)
        dataset.data_fields = list(dict.fromkeys([*dataset.data_fields, *VOC_GT_FIELDS]))
        reader._batch_transforms.collate_batch = False
    if type(dataset).__name__ == "ImageFolder":  # ppdet looks for image_dir outside dataset_dir
        dataset.set_images([str(p) for p in folder_images(dataset_paths(dataset)["image_dir"])])
    else:
        with quiet_stdout():  # pycocotools prints while indexing
            dataset.parse_dataset()
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.path}: dataset {key!r} holds no images")
    dataset.set_transform(reader._sample_transforms)
    dataset.set_kwargs(**reader.kwargs)
    return BatchSource(key=key, dataset=dataset, batch_transforms=reader._batch_transforms,
                       batch_size=int(batch_size or reader.batch_size), skip_bad_images=images_only)


def feed_from_batch(batch: dict[str, np.ndarray], feed_names: dict[str, str]) -> dict[str, np.ndarray]:
    """Pick the model inputs out of a collated batch ({data key: input name} mapping)."""
    missing = [k for k in feed_names if k not in batch]
    if missing:
        raise ConfigError(f"input_list names {missing} that the EvalReader does not produce "
                          f"(it produces {sorted(batch)})")
    return {name: np.asarray(batch[key], dtype=np.float32) for key, name in feed_names.items()}


def calibration_loader(cfg: PTQDetConfig, batch_size: int, batch_nums: int, progress: bool = True):
    """A `paddle.io.DataLoader` (what quant_post_static accepts) over pre-loaded batches.

    The batches are loaded here, in the main process, so that a bad image or transform
    fails now with a clear error, not later inside paddleslim.
    """
    import paddle

    source = build_source(cfg, "TrainDataset", batch_size=batch_size, images_only=True)
    total = min(len(source), batch_size * batch_nums)
    iterator = source.batches(max_images=total)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=source.num_batches(total), desc="loading calibration images", unit="batch")
    batches = [feed_from_batch(b, cfg.feed_names) for b in iterator]
    if source.skipped:
        print(f"warning: TrainDataset: skipped {len(source.skipped)} image(s) that cannot be decoded",
              file=sys.stderr)
    if not batches:
        raise ConfigError(f"{cfg.path}: TrainDataset has no image that can be decoded")

    class FeedLoader(paddle.io.DataLoader):
        """Yields the pre-loaded feed dicts; no worker, no thread."""

        def __init__(self, items: list[dict[str, np.ndarray]]):  # super().__init__ needs a dataset
            self.items = items
            self.batch_size = batch_size

        def __len__(self) -> int:
            return len(self.items)

        def __iter__(self):
            return iter(self.items)

        def __call__(self):
            return iter(self.items)

    return FeedLoader(batches)


def latency_feed(cfg: PTQDetConfig, dataset_key: str = "EvalDataset") -> dict:
    """One pre-processed image (batch 1) of the dataset, fed for latency runs."""
    source = build_source(cfg, dataset_key, batch_size=1)
    return feed_from_batch(next(source.batches(max_images=1)), cfg.feed_names)
