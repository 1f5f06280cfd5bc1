"""Model files on disk and output folders: the ground floor every other module stands on.

- `ModelFiles`: where an inference model's program and parameters are;
- `resolve_model_files`: find them in a folder (old names too), or say in one line what the
  folder holds instead (a file, a Paddle 3 PIR export, nothing);
- `check_output_dir`: an output folder that harms nothing (not the model, not someone's files);
- `read_cache_json`: a cached result read back, or recomputed (one warning line) when damaged.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError

LEGACY_NAMES = {"model.pdmodel": "__model__", "model.pdiparams": "__params__"}


@dataclass(frozen=True)
class ModelFiles:
    model_dir: Path
    model_filename: str
    params_filename: str

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_filename

    @property
    def params_path(self) -> Path:
        return self.model_dir / self.params_filename


def resolve_model_files(model_dir: str | Path, model_filename: str | None = None,
                        params_filename: str | None = None) -> ModelFiles:
    """Find the model and params files; accept the old names __model__/__params__. ConfigError
    in one line when they are not there, saying what the folder holds instead (model_dir_problem)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(model_dir_problem(model_dir))
    names = []
    for given, default in ((model_filename, "model.pdmodel"), (params_filename, "model.pdiparams")):
        name = given or default
        if not (model_dir / name).is_file() and name in LEGACY_NAMES and (model_dir / LEGACY_NAMES[name]).is_file():
            name = LEGACY_NAMES[name]
        if not (model_dir / name).is_file():
            raise ConfigError(model_dir_problem(model_dir, name))
        names.append(name)
    if Path(names[0]).suffix == ".json":  # model_filename names a Paddle 3 program
        raise ConfigError(pir_message(model_dir, names[0], names[1]))
    return ModelFiles(model_dir, names[0], names[1])


# Paddle 3 (and PaddleX 3) write the program of an inference model as <stem>.json, the PIR
# program, beside <stem>.pdiparams (PaddleX also inference.yml); Paddle 2.6 reads only .pdmodel
PIR_PROGRAM_SUFFIX = ".json"
# an export folder of ptqdet.export (names repeated here: export.py stands on this module)
ONNX_EXPORT_FILES = ("model.onnx", "model.xml")
ONNX_EXPORT_META = "export.json"


def pir_message(model_dir: Path, program: str, params: str) -> str:
    """What a Paddle 3 PIR export is, why it cannot be used, and how to get one that can."""
    return (f"model_dir {model_dir} holds a Paddle 3 PIR program ({program} + {params}, the format Paddle 3 and "
            "PaddleX 3 export by default), which Paddle 2.6 (the version PaddleSlim 2.6 needs) cannot read: "
            "export the model again with the PIR API switched off, e.g. `FLAGS_enable_pir_api=0 python "
            "tools/export_model.py ...` with Paddle 3 (it writes model.pdmodel + model.pdiparams), or with "
            "PaddleDetection 2.6's tools/export_model.py")


def model_dir_problem(model_dir: Path, missing: str | None = None) -> str:
    """One line on a model_dir that is not a Paddle model folder (or lacks the file `missing`):
    what the path is or holds instead, and what to do."""
    if not model_dir.exists():
        return f"model_dir does not exist: {model_dir}"
    if not model_dir.is_dir():
        hint = (f" (the folder of this file is {model_dir.parent})"
                if model_dir.suffix in (".pdmodel", ".pdiparams", PIR_PROGRAM_SUFFIX, ".onnx") else "")
        return (f"model_dir {model_dir} is a file, not a folder: give the folder that holds model.pdmodel and "
                f"model.pdiparams{hint}")
    found = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    if not found:
        return f"model file not found: {model_dir / (missing or 'model.pdmodel')} (model_dir {model_dir} is empty)"
    stems = {Path(n).stem for n in found if n.endswith(".pdiparams")}
    pir = [n for n in found if n.endswith(PIR_PROGRAM_SUFFIX) and Path(n).stem in stems]
    if pir and not any(n.endswith(".pdmodel") for n in found):
        return pir_message(model_dir, pir[0], f"{Path(pir[0]).stem}.pdiparams")
    if ONNX_EXPORT_META in found:
        return (f"model_dir {model_dir} is an ONNX export of ptqdet ({ONNX_EXPORT_META}) without its model "
                f"({' or '.join(ONNX_EXPORT_FILES)}): export it again (export_onnx.py --model_dir <Paddle model> "
                f"--save_dir {model_dir})")
    onnx = [n for n in found if n.endswith(".onnx")]
    if onnx:
        return (f"model_dir {model_dir} holds an ONNX model ({onnx[0]}) but no {ONNX_EXPORT_META}: ptqdet runs "
                "ONNX exports made by export_onnx.py (from the Paddle model folder), which record the inputs and "
                "the NMS settings there")
    message = f"model file not found: {model_dir / (missing or 'model.pdmodel')}"
    if missing and missing.endswith(".pdmodel"):
        others = [n for n in found if n.endswith(".pdmodel")]
        if others:
            return f"{message}; the folder holds {others[0]}: set model_filename and params_filename to its files"
    elif missing and missing.endswith(".pdiparams"):
        others = [n for n in found if n.endswith(".pdiparams")]
        if others:
            return f"{message}; the folder holds {others[0]}: set params_filename to it"
    return message


def holds_model(folder: Path) -> bool:
    """True when a folder holds a Paddle or ONNX model at its top level (an earlier output)."""
    return any(p.suffix in (".pdmodel", ".onnx") or p.name == LEGACY_NAMES["model.pdmodel"] for p in folder.iterdir())


def check_output_dir(path: Path, model_dir: Path | None, key: str = "save_dir", replaced: bool = True) -> None:
    """ConfigError unless `path` can be made an output folder that harms nothing: not model_dir,
    not inside it, creatable. replaced: the folder will be replaced whole (post_quant.py,
    export_onnx.py), so it must not hold model_dir nor be a non-empty folder without a model
    (an earlier output is replaced, anything else is refused rather than deleted)."""
    path = Path(path)
    resolved = path.resolve()
    if model_dir is not None:
        model = Path(model_dir).resolve()
        if resolved == model:
            raise ConfigError(f"{key} {path} is model_dir: the model would be overwritten; choose another folder")
        if model in resolved.parents:
            raise ConfigError(f"{key} {path} is inside model_dir {model_dir}; choose a folder outside it")
        if replaced and resolved in model.parents:
            raise ConfigError(f"{key} {path} holds model_dir {model_dir}: replacing it would delete the model")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a folder")
    if replaced and path.is_dir() and any(path.iterdir()) and not holds_model(path):
        example = sorted(p.name for p in path.iterdir())[0]
        raise ConfigError(f"{key} {path} holds files that are not a model (e.g. {example}) and would be replaced "
                          "whole; choose a new or empty folder, or an earlier output")
    # where the first new folder will be made: beside path for a folder replaced whole (its
    # temporary, and the recovery step's temporary FP32 model), inside it otherwise
    where = resolved.parent if replaced else resolved
    existing = next(p for p in (where, *where.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be created: {existing} is not writable")
    try:  # root passes os.access everywhere; /proc, /sys and read-only mounts refuse a folder all the same
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe", dir=existing))
    except OSError as exc:
        raise ConfigError(f"{key} {path} cannot be created: {existing} does not accept new folders "
                          f"({exc.strerror})") from exc


def read_cache_json(path: Path, what: str) -> dict[str, Any] | None:
    """A cached result (a JSON object) read back; None when there is none, or when it is
    damaged (cut short by a full disk or a killed copy, not JSON, not an object): then one
    warning line on stderr says so, and the caller computes the result again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"warning: {what} {path} is damaged ({reason}): computing it again", file=sys.stderr)
        return None
    return data
