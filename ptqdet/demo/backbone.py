"""Shapes-pretrained backbones: the backbone weights of a demo detector recovered from its export.

PaddleDetection starts every detector from an ImageNet-pretrained backbone; offline, the closest
we have are the two detectors trained on the demo shapes dataset (demo/models/picodet_s_shapes,
demo/models/ppyoloe_s_shapes). Only their exports exist (model.pdmodel / model.pdiparams, static
names such as ``conv2d_3.w_0``). Paddle names a layer's parameters and buffers in the order it
constructs them, so the same model built from its training config in a fresh process
(``create(cfg.architecture)``) carries the export's names: each state-dict key maps to the
export's tensor of the same name. The mapping is checked (every backbone key, BatchNorm means
and variances included, must find a tensor of the same shape, and every name must be used once),
and a mismatch stops with an error.

The ``backbone.*`` entries are saved as a ``.pdparams`` file (PaddleDetection's
``pretrain_weights`` form: keys without the ``backbone.`` prefix are not expected there, ppdet
matches by key) under outputs/zoo/pretrained/, cached by a digest of the export's bytes. The
recovery runs in a child process: the names depend on what was constructed before, and the
caller's process has usually built other models already.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PRETRAINED_DIR = Path("outputs/zoo/pretrained")


@dataclass(frozen=True)
class Source:
    name: str  # the file stem under PRETRAINED_DIR
    export: str  # the demo export folder (model.pdmodel, model.pdiparams)
    config: str  # its training config (ppdet)
    title: str  # how docs name the backbone


SOURCES = {
    "lcnet_x0_75": Source("lcnet_x0_75", "demo/models/picodet_s_shapes", "configs/demo/picodet_s_lcnet_shapes.yml",
                          "LCNet x0.75 from the demo PicoDet-s, shapes-pretrained"),
    "cspresnet_s": Source("cspresnet_s", "demo/models/ppyoloe_s_shapes", "configs/demo/ppyoloe_crn_s_shapes.yml",
                          "CSPResNet s from the demo PP-YOLOE-s, shapes-pretrained"),
}


_STRIDED_LCNET: list = []  # the class, defined once (ppdet imported lazily)


def register_ppdet_backbones() -> None:
    """Register StridedLCNet in ppdet's workspace (again after each ptqdet.config reset): LCNet
    whose out_shape carries its strides (2 ** feature map index), which FPN-style necks read and
    ppdet's LCNet leaves unset. Same layers and parameter names as LCNet."""
    from ppdet.core.workspace import global_config, register
    from ppdet.modeling.backbones.lcnet import LCNet
    from ppdet.modeling.shape_spec import ShapeSpec

    if not _STRIDED_LCNET:
        class StridedLCNet(LCNet):
            @property
            def out_shape(self):
                return [ShapeSpec(channels=c, stride=2 ** i) for c, i in zip(self._out_channels, self.feature_maps)]

        globals()["StridedLCNet"] = StridedLCNet  # ppdet's create looks the class up in its module
        _STRIDED_LCNET.append(StridedLCNet)
    if "StridedLCNet" not in global_config:
        register(_STRIDED_LCNET[0])


class BackboneMismatch(RuntimeError):
    """The rebuilt model's names or shapes do not match the export's."""


def export_digest(export: Path) -> str:
    digest = hashlib.sha256()
    for fname in ("model.pdmodel", "model.pdiparams"):
        digest.update(fname.encode() + b"\0" + (Path(export) / fname).read_bytes())
    return digest.hexdigest()[:16]


def pretrained_path(source: Source, root: Path = PRETRAINED_DIR) -> Path:
    """Where the backbone of `source` is (or will be) cached: <name>-<digest of its export>.pdparams."""
    return Path(root) / f"{source.name}-{export_digest(Path(source.export))}.pdparams"


def export_tensors(export: Path) -> dict:
    """name -> numpy array of every persistable variable of a Paddle inference export."""
    import numpy as np
    import paddle

    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            program, _, _ = paddle.static.load_inference_model(str(Path(export) / "model"), exe)
            names = [v.name for v in program.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
            return {n: np.array(scope.find_var(n).get_tensor()) for n in names}
    finally:
        paddle.disable_static()


def match_state_dict(model_state: dict, exported: dict, prefix: str = "backbone.") -> dict:
    """{key: exported array} for each model_state key under `prefix`, found by the tensor's name
    (`.name`); raises BackboneMismatch unless every such key finds a same-shape tensor, every
    other key that finds one has its shape too, and no name belongs to two different tensors."""
    out, problems, used = {}, [], {}
    for key, tensor in model_state.items():
        name = tensor.name
        if name not in exported:
            if key.startswith(prefix):
                problems.append(f"{key} ({name}): not in the export")
            continue
        shape = tuple(tensor.shape)
        if tuple(exported[name].shape) != shape:
            problems.append(f"{key} ({name}): shape {shape} in the model, {tuple(exported[name].shape)} in the export")
            continue
        if name in used and used[name] is not tensor:  # a shared parameter appears under each of its keys
            problems.append(f"{key} ({name}): name of two tensors")
        used[name] = tensor
        if key.startswith(prefix):
            out[key] = exported[name]
    if not out:
        problems.append(f"no key under {prefix!r}")
    if problems:
        raise BackboneMismatch(f"{len(problems)} mismatches, first: " + "; ".join(problems[:5]))
    return out


def recover(source: Source, out: Path) -> dict:
    """Build source.config's model (this process must not have built another one), map its state
    dict onto the export and save the backbone entries to `out`; returns a summary."""
    import paddle
    from ppdet.core.workspace import create, load_config

    from ..config import _reset_ppdet_workspace

    _reset_ppdet_workspace()
    paddle.set_device("cpu")
    cfg = load_config(source.config)
    model = create(cfg.architecture)
    state = model.state_dict()
    exported = export_tensors(Path(source.export))
    backbone = match_state_dict(state, exported)
    total = sum(1 for k in state if state[k].name in exported)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    paddle.save({k: paddle.to_tensor(v) for k, v in backbone.items()}, str(tmp))
    tmp.replace(out)
    summary = {"source": source.export, "config": source.config, "backbone_keys": len(backbone),
               "model_keys_matched": total, "model_keys": len(state), "out": str(out)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def stable_path(name: str, root: Path = PRETRAINED_DIR) -> Path:
    """The path the zoo configs' `pretrain_weights` name: a copy of the current cached file."""
    return Path(root) / f"{name}.pdparams"


def ensure_pretrained(name: str, root: Path = PRETRAINED_DIR) -> Path:
    """The backbone of SOURCES[name] at stable_path (copied from its cache file, recovered in a
    child process if missing); returns the stable path."""
    import shutil

    source = SOURCES[name]
    cached = pretrained_path(source, root)
    if not cached.is_file():
        subprocess.run([sys.executable, "-m", "ptqdet.demo.backbone", name, "--out", str(cached)], check=True)
    stable = stable_path(name, root)
    if not stable.is_file() or stable.read_bytes() != cached.read_bytes():
        tmp = stable.with_suffix(".tmp")
        shutil.copyfile(cached, tmp)
        tmp.replace(stable)
    return stable


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SOURCES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    source = SOURCES[args.name]
    print(json.dumps(recover(source, args.out or pretrained_path(source))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
