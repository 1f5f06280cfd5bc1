"""Deployment benchmark: FP32 vs INT8 latency on each backend, with the mAP of every row.

    python tools/bench_latency.py --config_path configs/demo/picodet_s_ptq_deploy.yaml \
        configs/demo/ppyoloe_s_ptq_deploy.yaml --goal_ratio 0.6 0.5

For each config: the FP32 model (model_dir); its INT8 model, made with the config's PTQ
section under --work_dir/<config name>/int8 (made again only when the FP32 model or the
settings change); ONNX exports of both (ONNX backends). Per backend: warm-up, then
--rounds interleaved rounds of --repeats timed runs per model (batch 1, one val image,
--threads threads); median and p10-p90 over all runs; then the mAP of each runner on
--dataset. OpenVINO FP32 is pinned to f32 precision, with an extra bf16 row. A model or
backend that cannot run gets a row saying why. Writes <out>.md and <out>.json, and the tables
under a results header to docs/results/deploy_latency.md (deploy_latency_1thread.md at 1 thread).
Measure on an idle machine: other processes make every number meaningless.
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
    parser.add_argument("--config_path", nargs="+", required=True,
                        help="one or more ptqdet configs; INT8 models use their PTQ section (QDQ: onnx_format True "
                             "for the ONNX backends, see configs/demo/*_ptq_deploy.yaml)")
    parser.add_argument("--backends", default="paddle,openvino,onnxruntime",
                        help="comma-separated backends to measure (default paddle,openvino,onnxruntime)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime (default 2)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model before timing (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved FP32/INT8 rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model and round (default 20)")
    parser.add_argument("--dataset", default="EvalDataset", choices=("EvalDataset", "FastEvalDataset"),
                        help="dataset of the mAP column (default EvalDataset)")
    parser.add_argument("--no_bf16", action="store_true", help="skip the OpenVINO FP32-at-bf16 row")
    parser.add_argument("--openvino_nms_after", action="store_true",
                        help="models exported with NMS inside (PicoDet): also OpenVINO FP32/INT8 rows that run the NMS "
                             "after the model (PaddleDetection's op) instead of inside it, in the same rounds")
    parser.add_argument("--goal_ratio", type=float, nargs="*", default=None,
                        help="INT8/FP32 latency goal of the best backend, one per config (e.g. 0.6 0.5)")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/deploy"),
                        help="INT8 models and ONNX exports, one folder per config (default outputs/deploy)")
    parser.add_argument("--out", type=Path, default=Path("outputs/deploy/benchmark"),
                        help="report path without suffix: writes .md and .json (default outputs/deploy/benchmark)")
    parser.add_argument("--results", default=None,
                        help="also write the tables under a header (date, CPU, command, idle) to "
                             "docs/results/<name>.md (default deploy_latency, deploy_latency_1thread with --threads 1; "
                             "'' for none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cli.quiet_libraries()
    from ptqdet.benchmark import BenchSettings, run_benchmark
    from ptqdet.config import ConfigError, load_config
    from ptqdet.report import atomic_write_text, machine_idle, machine_info, write_json

    if args.goal_ratio and len(args.goal_ratio) != len(args.config_path):
        raise ConfigError(f"--goal_ratio gives {len(args.goal_ratio)} values for {len(args.config_path)} configs")
    for name in ("threads", "rounds", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    configs = [load_config(p) for p in args.config_path]  # all checked before any work
    idle = machine_idle()  # before the benchmark's own load
    machine = machine_info()
    sections, results = [], []
    for i, cfg in enumerate(configs):
        settings = BenchSettings(backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
                                 threads=args.threads, warmup=args.warmup, rounds=args.rounds, repeats=args.repeats,
                                 dataset_key=args.dataset, openvino_bf16=not args.no_bf16,
                                 openvino_nms_after=args.openvino_nms_after,
                                 goal_ratio=args.goal_ratio[i] if args.goal_ratio else None, progress=not args.quiet)
        result = run_benchmark(cfg, args.work_dir / cfg.path.stem, settings)
        sections.append(f"{result.table()}\n\n{cfg.path.stem}: {result.verdict}")
        results.append(result.to_dict())
        print(sections[-1], flush=True)
    command = f"python tools/bench_latency.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    setup = (f"batch 1, {args.threads} thread{'s' if args.threads > 1 else ''}, {args.rounds} interleaved rounds x "
             f"{args.repeats} runs after {args.warmup} warm-up runs; mAP on {args.dataset}.")
    header = (f"Deployment benchmark, {machine['date']}, {machine['cpu']} ({machine['cores']} cores), "
              f"paddle {machine['paddle']}; {setup}\nCommand: {command}\n")
    atomic_write_text(args.out.with_suffix(".md"), header + "\n" + "\n\n".join(sections) + "\n")
    publish(args, "\n\n".join([setup, *sections]), command, idle)
    write_json(args.out.with_suffix(".json"), {"machine": machine, "results": results})
    print(f"\nreport: {args.out.with_suffix('.md')}")
    return 0


def publish(args: argparse.Namespace, body: str, command: str, idle: bool | None) -> None:
    """The tables under a results header in docs/results/ (--results; default by thread count)."""
    from ptqdet.report import write_results

    name = args.results if args.results is not None else "deploy_latency" + ("_1thread" if args.threads == 1 else "")
    if name:
        title = f"Deployment benchmark: FP32 and INT8 on every runtime, {args.threads} thread(s)"
        print(f"results: {write_results(name, title, body, command, idle)}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
