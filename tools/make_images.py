"""Copy the README's pictures from the demo analysis (run `make demo` first).

    python tools/make_images.py [--analysis outputs/picodet_s_analysis]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PICTURES = {"sensitivity.png": "picodet_s_demo_sensitivity.png",
            "activation_distribution.png": "picodet_s_demo_activation_distribution.png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analysis", type=Path, default=ROOT / "outputs" / "picodet_s_analysis",
                        help="analysis.py output folder to take the pictures from")
    args = parser.parse_args(argv)
    missing = [name for name in PICTURES if not (args.analysis / name).is_file()]
    if missing:
        print(f"error: {args.analysis} has no {', '.join(missing)}; run `make demo` first", file=sys.stderr)
        return 2
    (ROOT / "images").mkdir(exist_ok=True)
    for src, dst in PICTURES.items():
        shutil.copy2(args.analysis / src, ROOT / "images" / dst)
        print(f"images/{dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
