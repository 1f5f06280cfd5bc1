"""mAP of a model through PaddleDetection's own deployment client next to ptqdet's eval.py mAP.

    python tools/client_map.py --config_path configs/demo/picodet_s_ptq.yaml --model_dir demo/models/picodet_s_shapes
    python tools/client_map.py --config_path configs/coco_mini/picodet_s_ptq.yaml \
        --model_dir picodet_s_416_coco_lcnet --mkldnn

Both run on the config's EvalDataset images, on CPU, with oneDNN (--mkldnn) or without, and
are scored with pycocotools on the same annotation file (ptqdet/client.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptqdet import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="ptqdet YAML config (EvalDataset, EvalReader)")
    parser.add_argument("--model_dir", required=True, type=Path, help="Paddle model folder with infer_cfg.yml")
    parser.add_argument("--mkldnn", action="store_true", help="oneDNN on both sides (default: plain CPU kernels)")
    parser.add_argument("--dataset", default="EvalDataset", choices=("EvalDataset", "FastEvalDataset"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default as eval.py)")
    parser.add_argument("--client_dir", type=Path, default=None,
                        help="PaddleDetection deploy/python folder "
                             "(default ../shared/clients/PaddleDetection_deploy/python)")
    args = parser.parse_args(argv)
    cli.quiet_libraries()
    from ptqdet.client import client_map
    from ptqdet.config import load_config
    from ptqdet.files import resolve_model_files
    from ptqdet.model import BackendOptions
    from ptqdet.pipeline import EvalRequest, evaluate_model
    from ptqdet.report import mAP_points, markdown_table

    cfg = load_config(args.config_path)
    files = resolve_model_files(args.model_dir, cfg.model_filename, cfg.params_filename)
    ours = evaluate_model(cfg, EvalRequest(files, options=BackendOptions(threads=args.threads, mkldnn=args.mkldnn),
                                           dataset_key=args.dataset, progress=False)).result
    theirs = client_map(cfg, args.model_dir, args.mkldnn, args.dataset, threads=args.threads,
                        client_dir=args.client_dir)
    runtime = "oneDNN" if args.mkldnn else "no oneDNN"
    rows = [[name, runtime, r.images, mAP_points(r.map), mAP_points(r.stats.get("mAP50"))]
            for name, r in (("ptqdet eval.py", ours), ("PaddleDetection deploy/python/infer.py", theirs))]
    print(markdown_table(["evaluated by", "CPU runtime", "images", "mAP", "mAP50"], rows))
    print(f"\ndifference (client - ptqdet): {100 * (theirs.map - ours.map):+.2f} points  "
          f"(model {args.model_dir}, {args.dataset} of {args.config_path})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
