"""`make demo`: the whole workflow on the embedded demo, ending in a benchmark table.

For both demo models: FP32 eval -> PTQ -> INT8 eval (with CPU latency); for PicoDet-s also
analysis -> analyzed PTQ -> eval. Prints the table and writes outputs/benchmark.md (+ .json),
docs/results/demo.md (the table under a header: date, CPU, command, idle) and README's demo table.
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
    from ptqdet.demo.workflow import DemoOptions, demo_text, run_demo
    from ptqdet.report import atomic_write_text, machine_idle, machine_info, write_json

    idle = machine_idle()  # before the demo's own work raises the load
    opts = DemoOptions(out=args.out, threads=args.threads, rank_modes=tuple(args.rank_modes.split(",")),
                       proxy_batches=args.proxy_batches, deploy_threads=args.deploy_threads)
    demo = run_demo(opts)
    machine = machine_info()
    text = demo_text(demo, opts, machine)
    atomic_write_text(args.out / "benchmark.md", text)
    write_json(args.out / "benchmark.json", {"rows": demo.rows, "records": demo.records, "machine": machine})
    print("\n" + text)
    table = demo.table()
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
