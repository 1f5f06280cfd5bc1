"""The trained zoo: train each architecture on the demo shapes dataset (CPU, short schedule),
export it, quantize it with its config recipe and measure FP32 / INT8 mAP, PTQ time, OpenVINO
latency and NNCF's INT8 beside it; then docs/results/models.json, docs/models.md and
docs/results/zoo.md (ptqdet.zoo).

    make zoo                                               # every architecture
    .venv/bin/python tools/zoo.py --archs yolox_nano       # some (the others' rows kept)
    .venv/bin/python tools/zoo.py --steps train export     # train only (e.g. in the background)
    .venv/bin/python tools/zoo.py --write_docs             # tables from the saved results only

Resumable: every step is cached in outputs/zoo/<arch>.json (keyed by the configs' bytes and the
dataset), a stopped training resumes from its last epoch checkpoint. Training and every runtime
use one thread (OMP_NUM_THREADS=1 and PTQDET_THREADS=1 set here unless given). `make data` first.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _name in ("OMP_NUM_THREADS", "CPU_NUM", "FLAGS_num_threads", "MKL_NUM_THREADS", "PTQDET_THREADS"):
    os.environ.setdefault(_name, "1")


def main(argv: list[str] | None = None) -> int:
    from ptqdet import zoo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=None, choices=[a.name for a in zoo.ZOO], metavar="ARCH",
                        help="architectures, in this order (default: all): " + ", ".join(a.name for a in zoo.ZOO))
    parser.add_argument("--steps", nargs="+", default=list(zoo.STEPS), choices=zoo.STEPS, metavar="STEP",
                        help=f"steps to run (default: all): {', '.join(zoo.STEPS)}; a step runs once the one "
                             "before it is done (analysis only where INT8 is > 1.0 point below FP32)")
    parser.add_argument("--max_minutes", type=float, default=45.0,
                        help="training budget per model in CPU minutes of its one thread (= wall minutes on an idle "
                             "machine): stop at the first epoch end past it (default 45; 0: no budget)")
    parser.add_argument("--no_nncf", action="store_true", help="do not measure NNCF's INT8 (even with .venv-nncf)")
    parser.add_argument("--write_docs", action="store_true",
                        help="only merge the saved results into docs/results/models.json, docs/models.md and "
                             "docs/results/zoo.md (runs nothing)")
    parser.add_argument("--cache_dir", type=Path, default=zoo.ZOO_DIR,
                        help=f"checkpoints, exports and results (default {zoo.ZOO_DIR})")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    archs = [zoo.ZOO_BY_NAME[n] for n in args.archs] if args.archs else list(zoo.ZOO)
    command = "tools/zoo.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.write_docs:
        from ptqdet import cli

        cli.quiet_libraries()
        digest = zoo.dataset_digest()
        for arch in archs:  # the tables are written after each architecture: a long run shows what it has
            zoo.run_arch(arch, tuple(args.steps), args.cache_dir, args.max_minutes or None, nncf=not args.no_nncf,
                         data_digest=digest, command=command)
            write_docs(zoo, args.cache_dir)
    else:
        write_docs(zoo, args.cache_dir)
    return 0


def write_docs(zoo, cache_dir: Path) -> None:
    trained = zoo.collect_rows(zoo.ZOO, cache_dir)
    if trained:
        for path in zoo.write_docs(trained):
            print(f"wrote {path}")


if __name__ == "__main__":
    from ptqdet import cli

    sys.exit(cli.run(main))
