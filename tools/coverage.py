"""Architecture coverage matrix: build, export and run every architecture of ptqdet.coverage
through every stage (FP32 eval, PTQ, simulated INT8, oneDNN INT8, ONNX QDQ export, OpenVINO and
ONNX Runtime INT8), then write docs/results/models.json and docs/models.md from it.

    .venv/bin/python tools/coverage.py                       # every architecture (a few minutes)
    .venv/bin/python tools/coverage.py --archs detr_r18      # some of them (the others' rows kept)
    .venv/bin/python tools/coverage.py --write_docs          # docs/models.md from models.json only

Exports are cached in outputs/coverage/models/ (keyed by the configs' bytes); `make data` first.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from ptqdet import coverage

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=None, choices=[a.name for a in coverage.ARCHS],
                        metavar="ARCH", help="architectures to run (default: all): "
                        + ", ".join(a.name for a in coverage.ARCHS))
    parser.add_argument("--write_docs", action="store_true",
                        help="only regenerate docs/models.md from docs/results/models.json (runs nothing)")
    parser.add_argument("--results", type=Path, default=coverage.RESULTS_JSON,
                        help=f"results JSON to write (and read with --write_docs; default {coverage.RESULTS_JSON})")
    parser.add_argument("--docs", type=Path, default=coverage.MODELS_MD,
                        help=f"markdown matrix to write (default {coverage.MODELS_MD})")
    parser.add_argument("--cache_dir", type=Path, default=coverage.CACHE_DIR,
                        help=f"exports and per-architecture work folders (default {coverage.CACHE_DIR})")
    parser.add_argument("--refresh", action="store_true", help="export again even when the cached export is current")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every runtime (default 1)")
    parser.add_argument("--claim_dir", type=Path, default=None,
                        help="share the architectures with other runs given the same folder: each run takes the "
                        "next one no run has taken yet (in --archs order), so runs side by side split the work")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    if args.write_docs:
        out = coverage.write_docs(args.results, args.docs)
        print(f"wrote {out} from {args.results}")
        return 0

    from tqdm import tqdm

    from ptqdet import cli

    cli.quiet_libraries()
    archs = [coverage.ARCH_BY_NAME[n] for n in args.archs] if args.archs else list(coverage.ARCHS)
    rows = []
    for arch in archs:
        if args.claim_dir is not None and not coverage.claim(args.claim_dir, arch.name):
            continue
        with tqdm(total=len(coverage.STAGES), desc=f"{arch.name:<24}", unit="stage", leave=True) as bar:
            def progress(stage: str, bar=bar) -> None:
                bar.set_postfix_str(stage)
                if bar.n < bar.total and stage != coverage.STAGES[0]:
                    bar.update(1)
            row = coverage.run_arch(arch, args.cache_dir, args.refresh, progress, args.threads)
            bar.update(bar.total - bar.n)
            failed = [s for s, v in row["stages"].items() if v != "ok"]
            bar.set_postfix_str("all ok" if not failed else f"not ok: {', '.join(failed)}")
        rows.append(row)
    coverage.write_results(rows, args.results, merge=args.archs is not None)
    coverage.write_docs(args.results, args.docs)
    for row in rows:
        for stage, value in row["stages"].items():
            if value != "ok" and not value.startswith("skipped"):
                print(f"{row['arch']} {stage}: {value}")
    print(f"wrote {args.results} and {args.docs}")
    return 0


if __name__ == "__main__":
    from ptqdet import cli

    sys.exit(cli.run(main))
