"""Serial vs --workers N analysis, side by side in one run: wall time, ranking, target.

    .venv/bin/python tools/bench_parallel.py --config_path configs/demo/picodet_s_analysis.yaml --workers 2

Runs analysis.py twice from an empty cache, one after the other (serial with --threads T, then
--workers N at --worker_threads 1 and the same --threads for the stages the driver runs), then
compares the two: same layer order, largest per-layer mAP difference (from the caches, full
precision), same target model (skip list). Writes outputs/bench_parallel/bench_parallel.{md,json}
(`--out`) with the machine, the load average before and after each run, and the date, and the
table to docs/results/parallel.md (`--results`). Both runs
share the machine with whatever else runs: read the load average.

The latency-aware target rests on timings each run measures anew (the float cost of each layer
on the runtime, the latency base), so two runs can choose different float layers for a reason
that is not the workers. The replay separates the two: it gives the --workers run the serial
run's runtime measurements (its cache's latency section) and runs it again (the rankings and
simulations come from its cache), so its target must be the serial one. The accuracy-only
choice (ranking.json's target.accuracy_only) does not depend on timings: it is compared as is.
`--replay_only` runs the replay on the runs already in --out.
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

from ptqdet.analysis.context import cached_results  # noqa: E402 - the analysis' own reader of its cache


def analyze(flags: list[str], save_dir: Path, what: str) -> tuple[float, str]:
    """analysis.py with `flags` into save_dir (--quiet): its wall time and stderr; exits on failure."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "analysis.py"), *flags, "--save_dir", str(save_dir), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - start, r.stderr


def run(name: str, flags: list[str], out: Path) -> dict:
    save_dir = out / name
    shutil.rmtree(save_dir, ignore_errors=True)
    load_before = os.getloadavg()
    seconds, stderr = analyze(flags, save_dir, f"{name} run")
    ranking = json.loads((save_dir / "ranking.json").read_text())
    return {"name": name, "seconds": seconds, "load_before": load_before, "load_after": os.getloadavg(),
            "ranking": [row["layer"] for row in ranking["ranking"]],
            "cache": cached_results(save_dir),
            "target": ranking["target"], "counters": ranking["counters"], "stderr_tail": stderr[-2000:]}


def load(record: dict, name: str, out: Path) -> dict:
    """A run already in `out` (for --replay_only), as run() returns it (seconds and target from
    the report's record: a replay rewrites the run's ranking.json)."""
    saved = next(r for r in record["runs"] if r["name"] == name)
    return {**saved, "cache": cached_results(out / name)}


def replay(serial: dict, name: str, flags: list[str], out: Path) -> dict:
    """Run `name` again from its cache with the serial run's runtime measurements (module doc)."""
    from ptqdet.analysis.context import seed_runtime_measurements

    try:
        seed_runtime_measurements(out / name, serial["cache"])
    except ValueError as exc:
        raise SystemExit(f"cannot replay: {exc}") from None
    seconds, _ = analyze(flags, out / name, f"replay of {name}")
    target = json.loads((out / name / "ranking.json").read_text())["target"]
    return {"seconds": seconds, "skip": target["skip"], "same_target": target["skip"] == serial["target"]["skip"]}


def accuracy_only(run: dict) -> int | None:
    """Layers in float of the run's accuracy-only choice (None: no target)."""
    return ((run["target"] or {}).get("accuracy_only") or {}).get("num_float")


def compare(a: dict, b: dict) -> dict:
    sections = [k for k in a["cache"] if k.startswith(("metric_", "proxy_"))]
    diff = max((abs(a["cache"][s][n] - b["cache"][s][n]) for s in sections for n in a["cache"][s]), default=0.0)
    return {"same_order": a["ranking"] == b["ranking"], "max_abs_diff": diff, "sections": sections,
            "same_target": (a["target"] or {}).get("skip") == (b["target"] or {}).get("skip"),
            "same_accuracy_only": accuracy_only(a) == accuracy_only(b)}


def publish(name: str, body: str, load_before: float) -> None:
    """The table and verdict under a results header in docs/results/<name>.md ('': none); idle
    is judged from the load average before the serial run."""
    from ptqdet.report import IDLE_LOAD_PER_CORE, write_results

    if name:
        idle = load_before < IDLE_LOAD_PER_CORE * (os.cpu_count() or 1)
        command = " ".join(["python tools/bench_parallel.py", *sys.argv[1:]])
        print(f"results: {write_results(name, 'Serial vs --workers analysis', body, command, idle)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="analysis config")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of the parallel run (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="--threads of both runs (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_parallel", help="output folder")
    parser.add_argument("--replay_only", action="store_true",
                        help="only replay the runs already in --out (the latency-aware target with the serial run's "
                             "runtime measurements; see above) and rewrite the report")
    parser.add_argument("--results", default="parallel",
                        help="also write the table under a header (date, CPU, command, idle before the serial run) to "
                             "docs/results/<name>.md (default parallel; '' for none)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more analysis.py flags, for both runs")
    args = parser.parse_args()
    from ptqdet.report import atomic_write_text, machine_info, markdown_table, write_json

    common = ["--config_path", args.config_path, "--threads", str(args.threads), *args.extra]
    name, parallel_flags = f"workers{args.workers}", [*common, "--workers", str(args.workers)]
    if args.replay_only:
        record = json.loads((args.out / "bench_parallel.json").read_text())
        serial, parallel = load(record, "serial", args.out), load(record, name, args.out)
        stamp_runs = record["date"]
    else:
        serial = run("serial", common, args.out)
        parallel = run(name, parallel_flags, args.out)
        stamp_runs = time.strftime("%Y-%m-%d %H:%M")
    same = compare(serial, parallel)
    replayed = None
    if (serial["target"] or {}).get("selection") == "latency":
        replayed = replay(serial, name, parallel_flags, args.out)
        same["replay_same_target"] = replayed["same_target"]
    rows = [[r["name"], f"{r['seconds']:.0f}", f"{r['seconds'] / serial['seconds']:.2f}",
             r["target"]["num_skipped"] if r["target"] else "-",
             f"{r['target']['search_rounds']} / {r['target']['search_evaluations']}" if r["target"] else "-",
             f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}"] for r in (serial, parallel)]
    table = markdown_table(["run", "wall s", "x serial", "layers in float", "search rounds / full evals",
                            "load avg 1 min (before / after)"], rows)
    verdict = (f"same layer order: {same['same_order']}; largest per-layer difference ({', '.join(same['sections'])})"
               f": {same['max_abs_diff']:.2e}; same target model: {same['same_target']}; same accuracy-only "
               f"choice: {same['same_accuracy_only']} ({accuracy_only(serial)} and {accuracy_only(parallel)} layers)")
    if replayed is not None:
        verdict += (f"; replayed with the serial run's runtime measurements ({replayed['seconds']:.0f} s): "
                    f"same target model: {replayed['same_target']} ({len(replayed['skip'])} layers in float)")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    atomic_write_text(args.out / "bench_parallel.md",
                      f"{table}\n\n{verdict}\n\nruns {stamp_runs}, report {stamp}, `{' '.join(sys.argv)}`\n")
    runs = [{k: v for k, v in r.items() if k != "cache"} for r in (serial, parallel)]
    write_json(args.out / "bench_parallel.json", {"date": stamp_runs, "argv": sys.argv, "machine": machine_info(),
                                                   "compare": same, "replay": replayed, "runs": runs})
    print(table + "\n\n" + verdict)
    publish(args.results, f"{table}\n\n{verdict}\n\nruns {stamp_runs}", serial["load_before"][0])
    same_target = same["same_target"] or bool(same.get("replay_same_target"))
    ok = same["same_order"] and same["max_abs_diff"] <= 1e-6 and same["same_accuracy_only"] and same_target
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
