"""Model files on disk and output folders: the ground floor every other module stands on.

- `ModelFiles`: where an inference model's program and parameters are;
- `resolve_model_files`: find them in a folder (old names too), or say in one line what the
  folder holds instead (a file, a Paddle 3 PIR export, nothing);
- `check_output_dir`: an output folder that harms nothing (not the model, not someone's files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    """Find the model and params files; accept the old names __model__/__params__."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model_dir does not exist: {model_dir}")
    names = []
    for given, default in ((model_filename, "model.pdmodel"), (params_filename, "model.pdiparams")):
        name = given or default
        if not (model_dir / name).is_file() and name in LEGACY_NAMES and (model_dir / LEGACY_NAMES[name]).is_file():
            name = LEGACY_NAMES[name]
        if not (model_dir / name).is_file():
            raise ConfigError(f"model file not found: {model_dir / name}")
        names.append(name)
    return ModelFiles(model_dir, names[0], names[1])


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
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be created: {existing} is not writable")
