"""Train a demo detector from scratch on the shapes dataset and export it like PaddleDetection.

    python tools/train_demo.py --config configs/demo/picodet_s_lcnet_shapes.yml --name picodet_s_shapes
    python tools/train_demo.py --config configs/demo/ppyoloe_crn_s_shapes.yml --name ppyoloe_s_shapes --exclude_nms

The training and the export are ptqdet.demo.train's (shared with the zoo, tools/zoo.py).
Checkpoints go to output/train/<name>/ (outside git; a stopped run resumes with --resume).
The mAP after every epoch is appended to output/train/<name>/curve.json. `--export_only`
exports the final (or --weights) checkpoint to demo/models/<name>/ without training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ENABLE_FALL_BACK", "False")  # ppdet 2.6 export on paddle 2.6 needs it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="PaddleDetection training config")
    parser.add_argument("--name", required=True,
                        help="model name: checkpoints in output/train/NAME, export to demo/models/NAME")
    parser.add_argument("--exclude_nms", action="store_true",
                        help="export without NMS (as PP-YOLOE is exported for PTQ)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the config's epoch count (and cosine schedule)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="checkpoint prefix to resume from (e.g. output/train/NAME/2)")
    parser.add_argument("--export_only", action="store_true",
                        help="skip training, export --weights (default: model_final)")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint prefix to export")
    parser.add_argument("--export_dir", type=Path, default=None, help="export folder (default demo/models/NAME)")
    parser.add_argument("--card", action="store_true", help="write the model card (README.md) next to the export")
    parser.add_argument("--ptq_config", type=Path, default=None,
                        help="ptqdet config used to evaluate the export for the card")
    parser.add_argument("--history", type=Path, default=None,
                        help="curve.json of an earlier (resumed) run, for the card")
    parser.add_argument("--wall_time", default=None, help="total training wall time, for the card")
    parser.add_argument("--rebuild", default=None, help="the command(s) that rebuild this model, for the card")
    parser.add_argument("--note", default=None, help="free text for the card (how this run really went)")
    args = parser.parse_args(argv)

    from ptqdet.demo.train import export, load_train_config, train

    os.chdir(ROOT)
    save_dir = Path("output/train")
    cfg = load_train_config(args.config, args.name, save_dir, args.epochs)
    run_dir = save_dir / args.name
    if not args.export_only:
        train(cfg, run_dir, args.resume)
    weights = args.weights or (run_dir / "model_final")
    export_dir = args.export_dir or Path("demo/models") / args.name
    export(cfg, weights, export_dir, args.exclude_nms)
    print(f"exported {weights} -> {export_dir}")
    if args.card:
        write_card(args, cfg, run_dir, export_dir)
    return 0


def write_card(args, cfg, run_dir: Path, export_dir: Path) -> Path:
    """demo/models/<name>/README.md: recipe, cost, mAP curve and the FP32 mAP of the export."""
    from ptqdet import cli
    from ptqdet.config import load_config as ptq_load
    from ptqdet.files import resolve_model_files
    from ptqdet.pipeline import EvalRequest, evaluate_model
    from ptqdet.report import machine_info, markdown_table

    cli.quiet_libraries()
    curve = json.loads((run_dir / "curve.json").read_text()) if (run_dir / "curve.json").exists() else []
    extra = json.loads(args.history.read_text()) if args.history else []
    points = sorted({p["epoch"]: p for p in extra + curve}.values(), key=lambda p: p["epoch"])
    ptq_cfg = ptq_load(args.ptq_config)
    fp32 = evaluate_model(ptq_cfg, EvalRequest(resolve_model_files(export_dir), progress=False)).result
    m = machine_info()
    epochs = int(cfg.epoch)
    # an intermediate checkpoint (output/train/NAME/<epoch index>) exported before the schedule ended
    done = int(args.weights.name) + 1 if args.weights and args.weights.name.isdigit() else epochs
    points = [p for p in points if p["epoch"] <= done]
    iters_per_epoch = points[-1]["iteration"] // points[-1]["epoch"] if points else None
    text = f"""# {args.name}

Exported from `{args.config}` (trained from scratch on the demo shapes dataset, CPU only),
{'without NMS (`exclude_nms=True`: outputs boxes [B, M, 4] and scores [B, C, M])' if args.exclude_nms
 else 'with NMS inside (outputs bbox [N, 6] and bbox_num [B])'};
inputs `image` and `scale_factor`.

| | |
|---|---|
| FP32 mAP@[.5:.95] on demo val (200 images, ptqdet eval.py / pycocotools) | **{100 * fp32.map:.1f}** \
(mAP50 {100 * fp32.stats.get('mAP50', 0):.1f}) |
| epochs x iterations | {done if done == epochs else f'{done} of {epochs} planned'} x {iters_per_epoch or 'see log'} \
(batch size {int(cfg.TrainReader['batch_size'])}) |
| total wall time | {args.wall_time or 'see curve'} |
| machine | {m['cpu']}, {m['cores']} cores, paddle {m['paddle']}, one training thread (OMP_NUM_THREADS=1, \
two models trained side by side), {m['date']} |
| recipe | SGD momentum 0.9, cosine LR with linear warm-up, EMA, multi-scale 224-288 training, eval at 256x256 |

mAP on val after each epoch (EMA weights, ppdet's own evaluation during training):

{markdown_table(['epoch', 'iteration', 'mAP', 'mAP50'],
                [[p['epoch'], p['iteration'], f"{100 * p['map']:.1f}", f"{100 * p['map50']:.1f}"] for p in points])}

Rebuild (about the same wall time on a 2-core machine; `make data` first):

```bash
{args.rebuild or 'see tools/train_demo.py --help'}
```
"""
    if args.note:
        text += f"\n## How this run went\n\n{args.note}\n"
    if points:
        _plot_curve(points, export_dir / "curve.png", args.name)
        text += "\n![mAP vs iteration](curve.png)\n"
    out = export_dir / "README.md"
    out.write_text(text)
    return out


def _plot_curve(points: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([p["iteration"] for p in points], [100 * p["map"] for p in points], "o-", label="mAP@[.5:.95]")
    ax.plot([p["iteration"] for p in points], [100 * p["map50"] for p in points], "s--", label="mAP50")
    ax.axhline(30, color="grey", lw=0.8, ls=":", label="demo bar (30)")
    ax.set_xlabel("iteration (batch 8)")
    ax.set_ylabel("val mAP (x100)")
    ax.set_title(f"{title}: mAP on demo val during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
