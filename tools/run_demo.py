"""`make demo`: the whole workflow on the embedded demo, ending in a benchmark table.

For both demo models: FP32 eval -> PTQ -> INT8 eval (with CPU latency); for PicoDet-s also
analysis -> analyzed PTQ -> eval. Prints the table and writes outputs/benchmark.md (+ .json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptqdet import cli  # noqa: E402

MODELS = [("PP-YOLOE-s", "ppyoloe_s"), ("PicoDet-s", "picodet_s")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs/)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and latency")
    parser.add_argument("--rank_modes", default="quantize", help="analysis ranking modes (default: quantize)")
    parser.add_argument("--proxy_batches", type=int, default=1,
                        help="calibration batches for the analysis' SQNR proxy ranking (default 1)")
    args = parser.parse_args(argv)
    import os
    os.chdir(ROOT)
    cli.quiet_libraries()
    from ptqdet.analysis.stages import AnalysisOptions, analyze
    from ptqdet.config import load_config
    from ptqdet.metrics import evaluate
    from ptqdet.model import measure_latency, resolve_model_files
    from ptqdet.pipeline import latency_feed, make_predictor
    from ptqdet.quantize import quantize
    from ptqdet.report import atomic_write_text, machine_info, mAP_points, markdown_table, write_json

    start = time.time()
    rows, records, notes = [], [], []

    def measure(cfg, model_dir: Path) -> tuple[float, float, str]:
        """mAP on the val split and batch-1 latency of one and the same predictor."""
        predictor = make_predictor(resolve_model_files(model_dir), threads=args.threads)
        result = evaluate(predictor, cfg, "EvalDataset", desc=f"eval {model_dir.name}")
        latency = measure_latency(predictor, latency_feed(cfg))
        return result.map, latency["median_ms"], predictor.mode

    for title, name in MODELS:
        cfg = load_config(f"configs/demo/{name}_ptq.yaml")
        size = cfg.ppdet["EvalReader"]["sample_transforms"][1]["Resize"]["target_size"]
        size = f"{size[0]}x{size[1]}"
        print(f"\n== {title}: FP32 evaluation", flush=True)
        fp_map, fp_ms, fp_mode = measure(cfg, cfg.model_dir)
        rows.append([title, "FP32 (base model)", size, mAP_points(fp_map), round(fp_ms, 1), None, fp_mode])
        print(f"== {title}: PTQ ({cfg.ptq.algo})", flush=True)
        out = args.out / f"{name}_ptq"
        quantize(cfg, out)
        q_map, q_ms, q_mode = measure(cfg, out)
        rows.append([title, f"PTQ ({cfg.ptq.algo}, all layers)", size, mAP_points(q_map), round(fp_ms, 1),
                     round(q_ms, 1), q_mode])
        records.append({"model": title, "fp32_map": fp_map, "int8_map": q_map, "fp32_ms": fp_ms, "int8_ms": q_ms})
        if name == "picodet_s":
            print(f"== {title}: analysis", flush=True)
            acfg = load_config(f"configs/demo/{name}_analysis.yaml")
            ana_dir = args.out / f"{name}_analysis"
            result = analyze(acfg, AnalysisOptions(save_dir=ana_dir, threads=args.threads,
                                                   rank_modes=tuple(args.rank_modes.split(",")),
                                                   proxy_batches=args.proxy_batches))
            analyzed_cfg = load_config(result.files["analyzed_config"])
            print(f"== {title}: PTQ with {len(analyzed_cfg.skip_tensor_list)} layers in float", flush=True)
            out = args.out / f"{name}_analyzed_ptq"
            quantize(analyzed_cfg, out)
            a_map, a_ms, a_mode = measure(analyzed_cfg, out)
            rows.append([title, f"PTQ after analysis ({len(analyzed_cfg.skip_tensor_list)} layers in float)", size,
                         mAP_points(a_map), round(fp_ms, 1), round(a_ms, 1), a_mode])
            rho = ", ".join(f"{m} {v:.2f}" for m, v in result.spearman.items())
            c = result.counters
            notes.append(f"Analysis of {title}: {len(result.ranking)} layers ranked ({args.rank_modes}), "
                         f"{c.calibrations} calibrations, {c.full_evaluations} full and {c.fast_evaluations} fast "
                         f"evaluations, {c.seconds.get('total', 0):.0f} s; "
                         f"Spearman rank correlation of the SQNR proxy with the mAP ranking: {rho}.")
            records.append({"model": title, "analyzed_map": a_map, "analyzed_ms": a_ms,
                            "skip": analyzed_cfg.skip_tensor_list, "analysis": result.counters.__dict__})
    machine = machine_info()
    table = markdown_table(["model", "strategy", "input", "mAP (val)", "CPU FP32 ms", "CPU INT8 ms", "runtime"], rows)
    text = (f"# ptqdet demo benchmark\n\n{table}\n\n"
            f"mAP: COCO mAP@[.5:.95] (x100) on the demo shapes val split (200 images). Latency: Paddle Inference "
            f"{machine['paddle']}, batch 1, median of 30 runs after 5 warm-up runs, "
            f"{args.threads or 'default'} threads, on {machine['cpu']} ({machine['cores']} cores), {machine['date']}. "
            f"Total time of `make demo` after set-up: {time.time() - start:.0f} s.\n"
            + "".join(f"\n{n}\n" for n in notes))
    atomic_write_text(args.out / "benchmark.md", text)
    write_json(args.out / "benchmark.json", {"rows": rows, "records": records, "machine": machine})
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
