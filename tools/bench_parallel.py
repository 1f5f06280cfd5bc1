"""Serial vs --workers N analysis, side by side in one run: wall time, ranking, target.

    .venv/bin/python tools/bench_parallel.py --config_path configs/demo/picodet_s_analysis.yaml --workers 2

Runs analysis.py twice from an empty cache, one after the other (serial with --threads T, then
--workers N at --worker_threads 1 and the same --threads for the stages the driver runs), then
compares the two: same layer order, largest per-layer mAP difference (from the caches, full
precision), same target model (skip list). Writes outputs/bench_parallel/bench_parallel.{md,json}
(`--out`) with the machine, the load average before and after each run, and the date. Both runs
share the machine with whatever else runs: read the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(name: str, flags: list[str], out: Path) -> dict:
    save_dir = out / name
    shutil.rmtree(save_dir, ignore_errors=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "analysis.py"), *flags, "--save_dir", str(save_dir), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{r.stderr[-3000:]}")
    ranking = json.loads((save_dir / "ranking.json").read_text())
    cache = json.loads(next(save_dir.glob(".work/*/results.json")).read_text())
    return {"name": name, "seconds": seconds, "load_before": load_before, "load_after": os.getloadavg(),
            "ranking": [row["layer"] for row in ranking["ranking"]], "cache": cache,
            "target": ranking["target"], "counters": ranking["counters"], "stderr_tail": r.stderr[-2000:]}


def compare(a: dict, b: dict) -> dict:
    sections = [k for k in a["cache"] if k.startswith(("metric_", "proxy_"))]
    diff = max((abs(a["cache"][s][n] - b["cache"][s][n]) for s in sections for n in a["cache"][s]), default=0.0)
    return {"same_order": a["ranking"] == b["ranking"], "max_abs_diff": diff, "sections": sections,
            "same_target": (a["target"] or {}).get("skip") == (b["target"] or {}).get("skip")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="analysis config")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of the parallel run (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="--threads of both runs (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_parallel", help="output folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more analysis.py flags, for both runs")
    args = parser.parse_args()
    from ptqdet.report import atomic_write_text, machine_info, markdown_table, write_json

    common = ["--config_path", args.config_path, "--threads", str(args.threads), *args.extra]
    serial = run("serial", common, args.out)
    parallel = run(f"workers{args.workers}", [*common, "--workers", str(args.workers)], args.out)
    same = compare(serial, parallel)
    rows = [[r["name"], f"{r['seconds']:.0f}", f"{r['seconds'] / serial['seconds']:.2f}",
             r["target"]["num_skipped"] if r["target"] else "-",
             f"{r['target']['search_rounds']} / {r['target']['search_evaluations']}" if r["target"] else "-",
             f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}"] for r in (serial, parallel)]
    table = markdown_table(["run", "wall s", "x serial", "layers in float", "search rounds / full evals",
                            "load avg 1 min (before / after)"], rows)
    verdict = (f"same layer order: {same['same_order']}; largest per-layer difference ({', '.join(same['sections'])})"
               f": {same['max_abs_diff']:.2e}; same target model: {same['same_target']}")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    atomic_write_text(args.out / "bench_parallel.md", f"{table}\n\n{verdict}\n\n{stamp}, `{' '.join(sys.argv)}`\n")
    runs = [{k: v for k, v in r.items() if k != "cache"} for r in (serial, parallel)]
    write_json(args.out / "bench_parallel.json", {"date": stamp, "argv": sys.argv, "machine": machine_info(),
                                                   "compare": same, "runs": runs})
    print(table + "\n\n" + verdict)
    return 0 if same["same_order"] and same["max_abs_diff"] <= 1e-6 and same["same_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
