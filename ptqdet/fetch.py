"""Fetch the real COCO PicoDet-s (picodet_s_416_coco_lcnet, NMS inside) from the Python registry.

    python -m ptqdet.fetch --out picodet_s_416_coco_lcnet      # what `make real-model` runs

The model ships inside the wheel of `paddlelabel-ml==1.0.0` (Apache-2.0), at
`paddlelabel_ml/model/PicoDet/ckpt/`. The wheel is downloaded with this interpreter's pip
(`pip download --no-deps`), its sha256 checked, the four model files extracted into a
temporary folder next to --out, checked against the sums below
(../shared/models/picodet_s_416_coco_lcnet/PROVENANCE.md), and the folder renamed to --out.
Nothing is downloaded when --out already holds the four files with the right sums.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .paddle_static import atomic_dir


class FetchError(RuntimeError):
    """A download, checksum or extraction that failed; the message says which."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files live inside a wheel on the registry, with their sha256 sums."""

    requirement: str
    wheel_sha256: str
    member_dir: str  # folder inside the wheel, with a trailing "/"
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256


PICODET_S_416_COCO_LCNET = ModelSource(
    requirement="paddlelabel-ml==1.0.0",
    wheel_sha256="d3590ed527f3130536ec8cf2d1223f8cca18a320c9f98a109f2f93d9afd131bd",
    member_dir="paddlelabel_ml/model/PicoDet/ckpt/",
    files={
        "model.pdmodel": "da078fd535d21b3ef57e81f67e7e8f68514c4d38f1cb7df02f135966f4b1119f",
        "model.pdiparams": "e3922b2a8f1bc0d9ee9dce7152484f6a8a7d40f18f8701a222c884469b4546f2",
        "model.pdiparams.info": "ad830915bf1ac90da69318e845d574d77b178d9ae31482d5bd429d1378f8b288",
        "infer_cfg.yml": "7abdf247e229735c07de593231c1a283d282f4727eada0c7a6604cf2fc998b4a",
    },
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bad_files(folder: Path, source: ModelSource = PICODET_S_416_COCO_LCNET) -> list[str]:
    """Names of the source's files that are missing from `folder` or have another sha256."""
    folder = Path(folder)
    return [name for name, want in source.files.items()
            if not (folder / name).is_file() or sha256_of(folder / name) != want]


def is_present(folder: Path, source: ModelSource = PICODET_S_416_COCO_LCNET) -> bool:
    return Path(folder).is_dir() and not bad_files(folder, source)


def download_wheel(dest: Path, source: ModelSource = PICODET_S_416_COCO_LCNET) -> Path:
    """`pip download --no-deps` of the source's requirement into `dest`; the wheel's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", source.requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"pip download {source.requirement} failed (exit {proc.returncode}): {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {source.requirement} left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def extract_model(wheel: Path, out: Path, source: ModelSource = PICODET_S_416_COCO_LCNET) -> Path:
    """Check the wheel's sha256, extract the source's files into a temporary folder next to
    `out`, check their sums, then rename it to `out` (replacing an incomplete `out`)."""
    wheel, out = Path(wheel), Path(out)
    got = sha256_of(wheel)
    if got != source.wheel_sha256:
        raise FetchError(f"{wheel.name}: sha256 {got} is not the expected {source.wheel_sha256}")
    with atomic_dir(out) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for name in source.files:
                member = source.member_dir + name
                if member not in names:
                    raise FetchError(f"{wheel.name}: no {member} inside")
                with zf.open(member) as src, (tmp / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        wrong = bad_files(tmp, source)
        if wrong:
            raise FetchError(f"{wheel.name}: sha256 mismatch for {', '.join(wrong)}")
    return out


def fetch(out: Path, source: ModelSource = PICODET_S_416_COCO_LCNET, wheel: Path | None = None) -> bool:
    """Make `out` hold the source's model files. Returns False when they were already there
    (nothing downloaded), True when it fetched them. `wheel`: a wheel already on disk."""
    if is_present(out, source):
        return False
    if wheel is not None:
        extract_model(wheel, out, source)
        return True
    with tempfile.TemporaryDirectory(prefix="ptqdet_fetch_") as tmp:
        extract_model(download_wheel(Path(tmp), source), out, source)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("picodet_s_416_coco_lcnet"),
                        help="model folder to write (default ./picodet_s_416_coco_lcnet, where the configs look)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"use this {PICODET_S_416_COCO_LCNET.requirement} wheel instead of downloading it")
    args = parser.parse_args(argv)
    try:
        fetched = fetch(args.out, wheel=args.wheel)
    except (FetchError, OSError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {'fetched' if fetched else 'already present'}, sha256 sums checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
