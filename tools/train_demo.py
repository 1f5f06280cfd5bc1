"""Train a demo detector from scratch on the shapes dataset and export it like PaddleDetection.

    python tools/train_demo.py --config configs/demo/picodet_s_lcnet_shapes.yml --name picodet_s_shapes
    python tools/train_demo.py --config configs/demo/ppyoloe_crn_s_shapes.yml --name ppyoloe_s_shapes --exclude_nms

Checkpoints go to output/train/<name>/ (outside git; a stopped run resumes with --resume).
The mAP after every epoch is appended to output/train/<name>/curve.json. `--export_only`
exports the final (or --weights) checkpoint to demo/models/<name>/ without training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("ENABLE_FALL_BACK", "False")  # ppdet 2.6 export on paddle 2.6 needs it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _curve_callback(trainer, curve_path: Path):
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
            points.append({"epoch": epoch, "iteration": epoch * steps_per_epoch,
                           "map": round(float(results["bbox"][0]), 4),
                           "map50": round(float(results["bbox"][1]), 4),
                           "wall_s": round(time.time() - self.start, 1)})
            curve_path.write_text(json.dumps(points, indent=1))

    return CurveRecorder(trainer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="PaddleDetection training config")
    parser.add_argument("--name", required=True, help="model name: checkpoints in output/train/NAME, export to demo/models/NAME")
    parser.add_argument("--exclude_nms", action="store_true", help="export without NMS (as PP-YOLOE is exported for PTQ)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epoch count (and cosine schedule)")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint prefix to resume from (e.g. output/train/NAME/2)")
    parser.add_argument("--export_only", action="store_true", help="skip training, export --weights (default: model_final)")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint prefix to export")
    parser.add_argument("--export_dir", type=Path, default=None, help="export folder (default demo/models/NAME)")
    args = parser.parse_args(argv)

    import paddle
    from ppdet.core.workspace import load_config, merge_config
    from ppdet.engine import Trainer
    from ppdet.utils.check import check_config

    os.chdir(ROOT)
    paddle.set_device("cpu")
    paddle.seed(0)
    save_dir = Path("output/train")
    cfg = load_config(str(args.config))
    merge_config({"save_dir": str(save_dir), "filename": args.name, "use_gpu": False})
    if args.epochs:
        cfg.epoch = args.epochs
        for sched in cfg.LearningRate["schedulers"]:
            if hasattr(sched, "max_epochs"):
                sched.max_epochs = args.epochs
    check_config(cfg)
    run_dir = save_dir / args.name
    run_dir.mkdir(parents=True, exist_ok=True)

    if not args.export_only:
        trainer = Trainer(cfg, mode="train")
        from ppdet.engine.callbacks import ComposeCallback
        trainer._callbacks.append(_curve_callback(trainer, run_dir / "curve.json"))
        trainer._compose_callback = ComposeCallback(trainer._callbacks)
        if args.resume:
            trainer.resume_weights(str(args.resume))
        start = time.time()
        trainer.train(validate=True)
        (run_dir / "train_time.json").write_text(json.dumps({"wall_s": round(time.time() - start, 1),
                                                             "epochs": int(cfg.epoch),
                                                             "batch_size": int(cfg.TrainReader["batch_size"]),
                                                             "iters_per_epoch": len(trainer.loader)}))

    weights = args.weights or (run_dir / "model_final")
    if args.exclude_nms:
        merge_config({"exclude_nms": True, "trt": True})
    exporter = Trainer(cfg, mode="test")
    exporter.load_weights(str(weights))
    export_dir = args.export_dir or Path("demo/models") / args.name
    exporter.export(str(export_dir.parent / "_export_tmp"))
    produced = export_dir.parent / "_export_tmp" / args.name
    export_dir.mkdir(parents=True, exist_ok=True)
    for fname in ("model.pdmodel", "model.pdiparams", "infer_cfg.yml"):
        os.replace(produced / fname, export_dir / fname)
    import shutil
    shutil.rmtree(export_dir.parent / "_export_tmp", ignore_errors=True)
    print(f"exported {weights} -> {export_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
