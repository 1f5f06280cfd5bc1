"""Recovery benchmark: which PTQ recipe keeps a model's accuracy, and what it costs when deployed.

    python tools/bench_recovery.py --config_path configs/demo/picodet_s_ptq_deploy.yaml \
        configs/demo/ppyoloe_s_ptq_deploy.yaml configs/coco_mini/picodet_s_ptq_deploy.yaml \
        --recipes "plain" "equalize" --threads 1 2

For each config and recipe (ptqdet.recipes; --list shows them): PTQ (QDQ), mAP of the quantized
graph ("simulated") and on OpenVINO INT8, layers kept in float, PTQ wall time, and OpenVINO
latency of INT8 against FP32 (f32) and against FP32 at bf16, at each --threads, run by run in
alternation (ptqdet.recipe_bench.LATENCY_RUNS each), batch 1; and the convolutions' own time in
OpenVINO's per-node profile, INT8 over FP32 (what the INT8 kernels gain on this CPU). Writes <out>.md and <out>.json
(machine, CPU features, date, command), a row at a time, and the finished table to
docs/results/recovery.md (--results). Measure on an idle machine.

--nncf adds OpenVINO's own PTQ as rows beside the recipes (ptqdet.peers): NNCF's `nncf.quantize`
of the same FP32 export with default settings and a preset, calibrated on the same images,
measured the same way. NNCF runs in its own venv (`make nncf-venv`; it needs numpy 2).
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
    parser.add_argument("--config_path", nargs="+", help="ptqdet configs, one model each")
    parser.add_argument("--recipes", nargs="+", default=["plain", "equalize"],
                        help="recipe names (default: plain equalize); --list shows them all")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time (default 1 2)")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/recovery"),
                        help="models, one folder per config and recipe (default outputs/recovery)")
    parser.add_argument("--out", type=Path, default=Path("outputs/recovery/recovery"),
                        help="report path without suffix (default outputs/recovery/recovery)")
    parser.add_argument("--nncf", nargs="*", default=None, metavar="PRESET",
                        help="also OpenVINO's own PTQ (NNCF) of each model's FP32 export, calibrated on the same "
                             "images, one row per preset: performance, mixed (default with no value: both); "
                             "needs `make nncf-venv`")
    parser.add_argument("--nncf_python", type=Path, default=None,
                        help="python of the NNCF venv (default .venv-nncf/bin/python)")
    parser.add_argument("--results", default="recovery",
                        help="also write the table under a header (date, CPU, command, idle) to docs/results/<name>.md "
                             "when every row is done (default recovery; '' for none)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from ptqdet.recipes import RECIPES, recipe_by_name

    if args.list:
        for recipe in RECIPES:
            print(f"{recipe.name:28s} PTQ {recipe.ptq} skip_op_types {recipe.skip_op_types}  {recipe.note}")
        return 0
    if not args.config_path:
        parser.error("--config_path is required (or --list)")
    cli.quiet_libraries()
    from ptqdet.config import ConfigError, load_config
    from ptqdet.recipe_bench import model_name, recipes_table, run_recipes
    from ptqdet.report import atomic_write_text, machine_idle, machine_info, write_json, write_results

    if any(n < 1 for n in args.threads):
        raise ConfigError(f"--threads {args.threads}: thread counts must be positive")
    from ptqdet.peers import NNCF_PRESETS, NNCF_PYTHON, nncf_peers

    recipes = [recipe_by_name(name) for name in args.recipes]
    nncf_presets = () if args.nncf is None else tuple(args.nncf or NNCF_PRESETS)
    for preset in nncf_presets:
        if preset not in NNCF_PRESETS:
            raise ConfigError(f"--nncf {preset}: not an NNCF preset ({', '.join(NNCF_PRESETS)})")
    nncf_python = args.nncf_python or NNCF_PYTHON
    if nncf_presets and not nncf_python.is_file():
        raise ConfigError(f"--nncf needs NNCF in its own venv: {nncf_python} is missing (make nncf-venv)")
    for path in args.config_path:  # every config is checked before any work
        load_config(path)
    idle = machine_idle()  # before the benchmark's own load
    machine = machine_info()
    command = "python tools/bench_recovery.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []

    def write(row=None) -> None:
        if row is not None:
            rows.append(row)
        header = (f"Recovery benchmark, {machine['date']}, {machine['cpu']} ({machine['cores']} cores; "
                  f"{', '.join(machine['cpu_features']) or 'no VNNI/bf16/AMX'}), Paddle {machine['paddle']}\n"
                  f"Command: {command}\n\n")
        atomic_write_text(args.out.with_suffix(".md"), header + recipes_table(rows, args.threads) + "\n")
        write_json(args.out.with_suffix(".json"), {"machine": machine, "command": command, "threads": args.threads,
                                                   "rows": rows})

    for path in args.config_path:
        cfg = load_config(path)  # loaded again right before use: ppdet keeps the last config's readers globally
        run_recipes(cfg, recipes, args.work_dir / model_name(cfg).replace("/", "_"), args.threads,
                    progress=not args.quiet, on_row=write, peers=nncf_peers(nncf_presets, nncf_python))
    print(recipes_table(rows, args.threads))
    if args.results:
        title = "Recovery benchmark: PTQ recipes x models, mAP and OpenVINO latency"
        print(f"results: {write_results(args.results, title, recipes_table(rows, args.threads), command, idle)}")
    print(f"\nreport: {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
