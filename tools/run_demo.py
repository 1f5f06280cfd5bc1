"""`make demo`: the whole workflow on the embedded demo, ending in a benchmark table.

For both demo models: FP32 eval -> PTQ -> INT8 eval (with CPU latency); for PicoDet-s also
analysis -> analyzed PTQ -> eval. Prints the table and writes outputs/benchmark.md (+ .json),
docs/results/demo.md (the table under a header: date, CPU, command, idle) and README's demo table.
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


def target_note(result) -> str:
    """The analysis' target model in one sentence: held-out mAP, runtime parity, latency ratio."""
    t = result.target
    if t is None:
        return ""
    acc = t.accuracy_only
    return (f"Target model ({t.selection} selection): {t.num_skipped} layers in float, held-out mAP "
            f"{100 * t.verified_map:.1f} simulated / {100 * t.deployed_map:.1f} on {t.deployed_runtime} (target "
            f"{100 * t.heldout_target:.1f}: {'met' if t.met else 'NOT met'}), INT8/FP32 "
            f"{t.ratio:.2f} on {result.deploy.backend} ({result.deploy.threads} thread(s), measured by the analysis)"
            + (f"; the accuracy-only choice: {acc.num_float} layers in float, INT8/FP32 {acc.ratio:.2f}"
               if acc is not None and acc.ratio else "") + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs/)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and latency")
    parser.add_argument("--rank_modes", default="quantize", help="analysis ranking modes (default: quantize)")
    parser.add_argument("--proxy_batches", type=int, default=0,
                        help="calibration batches for the analysis' SQNR proxy ranking (default 0: none; it does not "
                             "predict the mAP ranking, see docs/analysis.md)")
    parser.add_argument("--deploy_threads", type=int, default=1,
                        help="threads of the OpenVINO latency columns (the recommended runtime; default 1, batch 1)")
    parser.add_argument("--results", default="demo",
                        help="also write the table under a header (date, CPU, command, idle) to docs/results/<name>.md;"
                             " the default, demo, also replaces README's demo table with it ('' for neither)")
    args = parser.parse_args(argv)
    import os
    os.chdir(ROOT)
    cli.quiet_libraries()
    from ptqdet.analysis.deploy import deploy_form, qdq_config
    from ptqdet.analysis.stages import AnalysisOptions, analyze
    from ptqdet.backends import BackendOptions, open_backend
    from ptqdet.benchmark import measure_models
    from ptqdet.config import load_config
    from ptqdet.files import resolve_model_files
    from ptqdet.metrics import evaluate
    from ptqdet.model import measure_latency
    from ptqdet.pipeline import latency_feed
    from ptqdet.quantize import quantize
    from ptqdet.report import atomic_write_text, machine_idle, machine_info, mAP_points, markdown_table, write_json

    idle = machine_idle()  # before the demo's own work raises the load
    start = time.time()
    rows, records, notes = [], [], []

    def measure(cfg, model_dir: Path) -> tuple[float, float, str]:
        """mAP on the val split and batch-1 latency of one and the same predictor."""
        predictor = open_backend("paddle", resolve_model_files(model_dir), BackendOptions(threads=args.threads))
        result = evaluate(predictor, cfg, "EvalDataset", desc=f"eval {model_dir.name}")
        latency = measure_latency(predictor, latency_feed(cfg))
        return result.map, latency["median_ms"], predictor.mode

    def openvino_ms(cfg, fp32_dir: Path, int8_dir: Path | None, name: str) -> tuple[float, float | None, str]:
        """OpenVINO latency (ms) of the FP32 model and of an INT8 model (QDQ ONNX exports), in the same
        interleaved rounds, batch 1, --deploy_threads threads; and the runtime's name."""
        exports = args.out / "onnx" / name
        models = {"FP32": deploy_form(resolve_model_files(fp32_dir), "openvino", exports / "fp32")}
        if int8_dir is not None:
            models["INT8"] = deploy_form(resolve_model_files(int8_dir), "openvino", exports / "int8")
        rows = measure_models(cfg, models, "openvino", args.deploy_threads, latency_feed(cfg), progress=True)
        int8 = rows.get("INT8")
        return rows["FP32"].median, int8.median if int8 else None, (int8 or rows["FP32"]).runtime.split(" (")[0]

    def ov_cells(fp_ov: float, q_ov: float | None) -> list:
        return [round(fp_ov, 1), round(q_ov, 1) if q_ov else None, f"{q_ov / fp_ov:.2f}" if q_ov else None]

    for title, name in MODELS:
        cfg = qdq_config(load_config(f"configs/demo/{name}_ptq.yaml"))  # QDQ: Paddle and OpenVINO run the same model
        size = cfg.ppdet["EvalReader"]["sample_transforms"][1]["Resize"]["target_size"]
        size = f"{size[0]}x{size[1]}"
        print(f"\n== {title}: FP32 evaluation", flush=True)
        fp_map, fp_ms, fp_mode = measure(cfg, cfg.model_dir)
        print(f"== {title}: PTQ ({cfg.ptq.algo})", flush=True)
        out = args.out / f"{name}_ptq"
        quantize(cfg, out)
        q_map, q_ms, q_mode = measure(cfg, out)
        fp_ov, q_ov, ov_mode = openvino_ms(cfg, cfg.model_dir, out, name)
        rows.append([title, "FP32 (base model)", size, mAP_points(fp_map), round(fp_ms, 1), None, fp_mode,
                     *ov_cells(fp_ov, None), ov_mode])
        rows.append([title, f"PTQ ({cfg.ptq.algo}, all layers)", size, mAP_points(q_map), round(fp_ms, 1),
                     round(q_ms, 1), q_mode, *ov_cells(fp_ov, q_ov), ov_mode])
        records.append({"model": title, "fp32_map": fp_map, "int8_map": q_map, "fp32_ms": fp_ms, "int8_ms": q_ms,
                        "openvino_fp32_ms": fp_ov, "openvino_int8_ms": q_ov})
        if name == "picodet_s":
            print(f"== {title}: analysis", flush=True)
            acfg = load_config(f"configs/demo/{name}_analysis.yaml")
            ana_dir = args.out / f"{name}_analysis"
            result = analyze(acfg, AnalysisOptions(save_dir=ana_dir, threads=args.threads,
                                                   rank_modes=tuple(args.rank_modes.split(",")),
                                                   proxy_batches=args.proxy_batches,
                                                   deploy_threads=args.deploy_threads))
            analyzed_cfg = qdq_config(load_config(result.files["analyzed_config"]))
            print(f"== {title}: PTQ with {len(analyzed_cfg.skip_tensor_list)} layers in float", flush=True)
            out = args.out / f"{name}_analyzed_ptq"
            quantize(analyzed_cfg, out)
            a_map, a_ms, a_mode = measure(analyzed_cfg, out)
            fp_ov, a_ov, ov_mode = openvino_ms(analyzed_cfg, cfg.model_dir, out, f"{name}_analyzed")
            rows.append([title, f"PTQ after analysis ({len(analyzed_cfg.skip_tensor_list)} layers in float)", size,
                         mAP_points(a_map), round(fp_ms, 1), round(a_ms, 1), a_mode, *ov_cells(fp_ov, a_ov), ov_mode])
            rho = ", ".join(f"{m} {v:.2f}" for m, v in result.spearman.items())
            c = result.counters
            notes.append(f"Analysis of {title}: {len(result.ranking)} layers ranked ({args.rank_modes}), "
                         f"{c.calibrations} calibrations, {c.full_evaluations} full and {c.fast_evaluations} fast "
                         f"evaluations, {c.seconds.get('total', 0):.0f} s; "
                         + (f"Spearman rank correlation of the SQNR proxy with the mAP ranking: {rho}. " if rho
                            else "No proxy ranking (off by default: docs/analysis.md). ") + target_note(result))
            records.append({"model": title, "analyzed_map": a_map, "analyzed_ms": a_ms, "analyzed_openvino_ms": a_ov,
                            "openvino_fp32_ms_same_rounds": fp_ov,
                            "skip": analyzed_cfg.skip_tensor_list, "analysis": result.counters.__dict__})
    machine = machine_info()
    table = markdown_table(["model", "strategy", "input", "mAP (val)", "CPU FP32 ms", "CPU INT8 ms", "runtime",
                            "OpenVINO FP32 ms", "OpenVINO INT8 ms", "OpenVINO INT8/FP32", "recommended runtime"], rows)
    text = (f"# ptqdet demo benchmark\n\n{table}\n\n"
            f"mAP: COCO mAP@[.5:.95] (x100) on the demo shapes val split (200 images), on the runtime of the "
            f"`runtime` column. Latency: Paddle Inference "
            f"{machine['paddle']}, batch 1, median of 30 runs after 5 warm-up runs, "
            f"{args.threads or 'default'} threads; OpenVINO (the recommended CPU runtime: docs/deployment.md), "
            f"QDQ ONNX exports of the same models, batch 1, {args.deploy_threads} thread(s), FP32 and INT8 run "
            f"in alternation (100 runs each after 10 warm-up runs, median), the ratio taken within those runs; "
            f"on {machine['cpu']} ({machine['cores']} cores), {machine['date']}. "
            f"Total time of `make demo` after set-up: {time.time() - start:.0f} s.\n"
            + "".join(f"\n{n}\n" for n in notes))
    atomic_write_text(args.out / "benchmark.md", text)
    write_json(args.out / "benchmark.json", {"rows": rows, "records": records, "machine": machine})
    print("\n" + text)
    publish(args.results, table, text.split(table, 1)[1], idle, argv)
    return 0


def publish(name: str, table: str, notes: str, idle: bool | None, argv: list[str] | None) -> None:
    """The table and its notes under a results header in docs/results/<name>.md; with the name
    "demo" the table also replaces README's demo table (generated, never edited by hand)."""
    if not name:
        return
    from ptqdet.report import update_readme_block, write_results

    flags = sys.argv[1:] if argv is None else argv
    command = " ".join(["python tools/run_demo.py", *flags]) if flags else "make demo"
    path = write_results(name, "`make demo`: both demo models, FP32 and INT8", f"{table}\n\n{notes.strip()}",
                         command, idle)
    if name == "demo":
        update_readme_block(ROOT / "README.md", "demo", table)
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
