"""Data loading over PaddleDetection datasets and transforms, in the main process.

ppdet's own reader runs a prefetch thread; when a transform fails inside it, the main
process waits forever. ptqdet applies the same dataset objects and `EvalReader`
transforms itself, batch by batch, so an error surfaces at once with its traceback.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, PTQDetConfig


@dataclass
class BatchSource:
    """A parsed dataset with its sample and batch transforms."""

    key: str
    dataset: Any  # ppdet DetDataset
    batch_transforms: Any  # ppdet BatchCompose
    batch_size: int

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, max_images: int | None = None) -> int:
        n = len(self) if max_images is None else min(max_images, len(self))
        return (n + self.batch_size - 1) // self.batch_size

    def batches(self, max_images: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield collated batches (dict of numpy arrays), in dataset order."""
        n = len(self) if max_images is None else min(max_images, len(self))
        for start in range(0, n, self.batch_size):
            samples = [self.dataset[i] for i in range(start, min(start + self.batch_size, n))]
            yield self.batch_transforms(samples)


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


def check_dataset(cfg: PTQDetConfig, key: str, need_annotations: bool = True) -> None:
    """Raise ConfigError naming the key and path when a dataset cannot be read."""
    if not cfg.has_dataset(key):
        raise ConfigError(f"{cfg.path}: missing dataset {key!r}")
    for field_name, path in dataset_paths(cfg.ppdet[key]).items():
        if field_name == "anno_path" and not need_annotations and type(cfg.ppdet[key]).__name__ == "ImageFolder":
            continue
        if not path.exists():
            raise ConfigError(f"{cfg.path}: {key}.{field_name} does not exist: {path}")


def build_source(cfg: PTQDetConfig, key: str, batch_size: int | None = None, images_only: bool = False) -> BatchSource:
    """Parse dataset `key` (EvalDataset, FastEvalDataset, TrainDataset) with EvalReader's transforms.

    images_only: read only the images, not the boxes (calibration). Loading boxes for
    calibration breaks batching when images have different numbers of objects.
    """
    from ppdet.core.workspace import create

    check_dataset(cfg, key, need_annotations=not images_only)
    dataset = cfg.ppdet[key]
    if images_only and hasattr(dataset, "data_fields"):
        dataset.data_fields = ["image"]
    reader = create("EvalReader")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        dataset.parse_dataset()
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.path}: dataset {key!r} holds no images")
    dataset.set_transform(reader._sample_transforms)
    dataset.set_kwargs(**reader.kwargs)
    return BatchSource(key=key, dataset=dataset, batch_transforms=reader._batch_transforms,
                       batch_size=int(batch_size or reader.batch_size))


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

    class FeedLoader(paddle.io.DataLoader):
        """Yields the pre-loaded feed dicts; no worker, no thread."""

        def __init__(self, items: list[dict[str, np.ndarray]]):  # noqa: super().__init__ needs a dataset
            self.items = items
            self.batch_size = batch_size

        def __len__(self) -> int:
            return len(self.items)

        def __iter__(self):
            return iter(self.items)

        def __call__(self):
            return iter(self.items)

    return FeedLoader(batches)
