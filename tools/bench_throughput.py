"""Throughput benchmark: images/s of FP32 (f32 and bf16) and INT8 on OpenVINO under its THROUGHPUT hint.

    python tools/bench_throughput.py --config_path configs/demo/ppyoloe_s_ptq_deploy.yaml \
        configs/demo/picodet_s_ptq_deploy.yaml --batches 1 4 8 --threads 2

For each config: the FP32 model and its INT8 model (PTQ with the config's PTQ section in QDQ
form, under --work_dir/<config name>/, made again only when the model, settings or calibration
images change), their ONNX exports; then per batch size the three runs (FP32 at f32, FP32 at
bf16, INT8) in alternating rounds of --seconds each, every request of OpenVINO's THROUGHPUT hint
kept busy (ptqdet.throughput). An export whose input batch is fixed to 1 gets batch 1 only, its
other rows say why. Writes <out>.md/.json and the table under a results header to
docs/results/throughput.md. Measure on an idle machine.
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
    parser.add_argument("--config_path", nargs="+", required=True, help="one or more ptqdet configs")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8], help="batch sizes (default 1 4 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads OpenVINO may use (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per batch size (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per model and round (default 3)")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/deploy"),
                        help="INT8 models and ONNX exports, cached per config (default outputs/deploy)")
    parser.add_argument("--out", type=Path, default=Path("outputs/deploy/throughput"),
                        help="report path without suffix: <out>.md and <out>.json (default outputs/deploy/throughput)")
    parser.add_argument("--results", default="throughput",
                        help="also write the table under a header (date, CPU, command, idle) to docs/results/<name>.md "
                             "(default throughput; '' for none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.quiet)
    from ptqdet.analysis.deploy import qdq_config
    from ptqdet.benchmark import prepare_models
    from ptqdet.config import load_config
    from ptqdet.data import latency_feed
    from ptqdet.report import atomic_write_text, machine_idle, markdown_table, write_json, write_results
    from ptqdet.throughput import THROUGHPUT_HEADERS, measure_throughput, throughput_table

    idle = machine_idle()
    table_rows, records = [], []
    for path in args.config_path:
        cfg = qdq_config(load_config(path))
        models = prepare_models(cfg, args.work_dir / cfg.path.stem, need_onnx=True, progress=not args.quiet)
        exports = {name: models.onnx[key] for name, key in (("FP32 f32", "FP32"), ("FP32 bf16", "FP32"),
                                                            ("INT8", "INT8"))}
        failed = [f"{name}: {value}" for name, value in exports.items() if not isinstance(value, Path)]
        if failed:
            raise SystemExit(f"{path}: ONNX export failed: {'; '.join(failed)}")
        precisions = {"FP32 f32": "f32", "FP32 bf16": "bf16", "INT8": "f32"}
        rows = measure_throughput({name: (exports[name], precisions[name]) for name in exports}, args.batches,
                                  args.threads, latency_feed(cfg), args.rounds, args.seconds, not args.quiet)
        table_rows += throughput_table(cfg.path.stem, rows)
        records.append({"config": str(path), "rows": [row.__dict__ | {"median": row.median} for row in rows]})
    table = markdown_table(THROUGHPUT_HEADERS, table_rows)
    notes = (f"OpenVINO THROUGHPUT hint, {args.threads} threads, every request in flight kept busy for "
             f"{args.seconds:g} s per model and round, {args.rounds} alternating rounds per batch size, median; "
             "INT8: the QDQ export with its float ops at f32.")
    atomic_write_text(args.out.with_suffix(".md"), f"{table}\n\n{notes}\n")
    write_json(args.out.with_suffix(".json"), {"records": records, "threads": args.threads})
    print(f"{table}\n\n{notes}")
    if args.results:
        command = "python tools/bench_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
        body = f"{table}\n\n{notes}"
        print(f"results: {write_results(args.results, 'Throughput on OpenVINO', body, command, idle)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
