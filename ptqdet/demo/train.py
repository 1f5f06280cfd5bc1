"""Train a PaddleDetection config from scratch on the demo shapes dataset and export it like
PaddleDetection's tools/export_model.py (used by tools/train_demo.py and ptqdet.zoo).

Checkpoints go to a run folder (one per model; `<epoch index>.pdparams` after every epoch,
`model_final` at the end); the mAP after every epoch is appended to its curve.json. A stopped
run resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("ENABLE_FALL_BACK", "False")  # ppdet 2.6 export on paddle 2.6 needs it


class StopTraining(Exception):
    """Raised by the timing callback after its iterations (ends Trainer.train early)."""


def load_train_config(config: Path, name: str, save_dir: Path, epochs: int | None = None):
    """The ppdet config of `config` with checkpoints in save_dir/name (and `epochs` if given)."""
    import paddle
    from ppdet.core.workspace import load_config, merge_config
    from ppdet.utils.check import check_config

    from ..config import _reset_ppdet_workspace
    from .backbone import register_ppdet_backbones

    _reset_ppdet_workspace()
    register_ppdet_backbones()
    paddle.set_device("cpu")
    paddle.seed(0)
    cfg = load_config(str(config))
    merge_config({"save_dir": str(save_dir), "filename": name, "use_gpu": False})
    if epochs:
        cfg.epoch = epochs
        for sched in cfg.LearningRate["schedulers"]:
            if hasattr(sched, "max_epochs"):
                sched.max_epochs = epochs
    check_config(cfg)
    return cfg


def last_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint prefix of the last finished epoch in run_dir (`<n>.pdparams` with its
    `.pdopt`), or None when there is none."""
    done = [int(m.group(1)) for p in Path(run_dir).glob("*.pdparams")
            if (m := re.fullmatch(r"(\d+)\.pdparams", p.name)) and p.with_suffix(".pdopt").is_file()]
    return Path(run_dir) / str(max(done)) if done else None


def curve_callback(trainer, curve_path: Path):
    from ppdet.engine.callbacks import Callback

    class CurveRecorder(Callback):
        """Records (epoch, iteration, mAP, wall time) after each evaluation."""

        def __init__(self, model):
            super().__init__(model)
            self.start = time.time()

        def on_epoch_end(self, status):
            if status.get("mode") != "eval":
                return
            results = self.model._metrics[0].get_results()
            if "bbox" not in results:
                return
            epoch = int(status["epoch_id"]) + 1
            steps_per_epoch = len(self.model.loader)
            points = json.loads(curve_path.read_text()) if curve_path.exists() else []
            points = [p for p in points if p["epoch"] != epoch]
            points.append({"epoch": epoch, "iteration": epoch * steps_per_epoch,
                           "map": round(float(results["bbox"][0]), 4),
                           "map50": round(float(results["bbox"][1]), 4),
                           "wall_s": round(time.time() - self.start, 1)})
            curve_path.write_text(json.dumps(points, indent=1))

    return CurveRecorder(trainer)


def step_callback(trainer, on_step: Callable[[dict], None]):
    """A ppdet callback calling on_step(status) after each training step and, when on_step has
    an `epoch_end` method, on_step.epoch_end(status) after each epoch's evaluation (the epoch's
    checkpoint saved and its mAP recorded by then)."""
    from ppdet.engine.callbacks import Callback

    class StepHook(Callback):
        def on_step_end(self, status):
            if status.get("mode") == "train":
                on_step(status)

        def on_epoch_end(self, status):
            if status.get("mode") == "eval" and hasattr(on_step, "epoch_end"):
                on_step.epoch_end(status)

    return StepHook(trainer)


def _add_callbacks(trainer, callbacks: list) -> None:
    from ppdet.engine.callbacks import ComposeCallback

    trainer._callbacks.extend(callbacks)  # noqa: SLF001 - ppdet has no public hook
    trainer._compose_callback = ComposeCallback(trainer._callbacks)  # noqa: SLF001


def train(cfg, run_dir: Path, resume: Path | None = None,
          on_step: Callable[[dict], None] | None = None, validate: bool = True) -> dict[str, Any]:
    """Trainer.train on cfg (checkpoints in run_dir), resuming from `resume` (else starting from
    cfg.pretrain_weights when set, as PaddleDetection's tools/train.py does); writes and returns
    run_dir/train_time.json (wall time of this run, epochs, batch size, iterations per epoch)."""
    from ppdet.engine import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, mode="train")
    callbacks = [curve_callback(trainer, run_dir / "curve.json")]
    if on_step:
        callbacks.append(step_callback(trainer, on_step))
    _add_callbacks(trainer, callbacks)
    if resume:
        trainer.resume_weights(str(resume))
    elif cfg.get("pretrain_weights"):  # as PaddleDetection's tools/train.py: a fresh run starts from them
        trainer.load_weights(str(cfg.pretrain_weights))
    start = time.time()
    trainer.train(validate=validate)
    previous = json.loads((run_dir / "train_time.json").read_text()) if (run_dir / "train_time.json").is_file() else {}
    info = {"wall_s": round(time.time() - start + previous.get("wall_s", 0) * bool(resume), 1),
            "epochs": int(cfg.epoch), "batch_size": int(cfg.TrainReader["batch_size"]),
            "iters_per_epoch": len(trainer.loader)}
    (run_dir / "train_time.json").write_text(json.dumps(info))
    return info


def seconds_per_iteration(cfg, iterations: int = 6, skip: int = 2) -> float:
    """Median wall seconds of a training iteration of cfg (the first `skip` not counted)."""
    from ppdet.engine import Trainer

    stamps: list[float] = []

    def on_step(status: dict) -> None:
        stamps.append(time.time())
        if len(stamps) > iterations + skip:
            raise StopTraining

    trainer = Trainer(cfg, mode="train")
    _add_callbacks(trainer, [step_callback(trainer, on_step)])
    try:
        trainer.train(validate=False)
    except StopTraining:
        pass
    gaps = sorted(b - a for a, b in zip(stamps[skip:], stamps[skip + 1:]))
    return gaps[len(gaps) // 2]


def export(cfg, weights: Path, export_dir: Path, exclude_nms: bool = False) -> Path:
    """Export checkpoint `weights` as PaddleDetection's tools/export_model.py does, to
    export_dir (model.pdmodel, model.pdiparams, infer_cfg.yml)."""
    from ppdet.core.workspace import merge_config
    from ppdet.engine import Trainer

    if exclude_nms:
        merge_config({"exclude_nms": True, "trt": True})
    exporter = Trainer(cfg, mode="test")
    exporter.load_weights(str(weights))
    tmp = export_dir.parent / f"_export_tmp_{export_dir.name}"
    exporter.export(str(tmp))
    produced = tmp / cfg.filename
    export_dir.mkdir(parents=True, exist_ok=True)
    for fname in ("model.pdmodel", "model.pdiparams", "infer_cfg.yml"):
        os.replace(produced / fname, export_dir / fname)
    shutil.rmtree(tmp, ignore_errors=True)
    return export_dir
