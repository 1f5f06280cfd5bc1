"""Named PTQ recipes: a config's PTQ section with some settings replaced.

A recipe is what the recovery benchmark compares (and what a recipe search would try): the
calibration algorithm, weight rounding, recovery methods, or the old remedy of keeping layer
types in float. Applied to a config, it gives a config that post_quant.py would run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, PTQDetConfig, PTQSettings


@dataclass(frozen=True)
class Recipe:
    name: str
    ptq: dict[str, Any] = field(default_factory=dict)  # PTQ keys replaced
    skip_op_types: tuple[str, ...] | None = None  # None: the config's own
    note: str = ""


RECIPES: tuple[Recipe, ...] = (
    Recipe("plain", {"equalize_depthwise": False}, (), "the config's calibration, nothing else"),
    Recipe("plain, mse", {"equalize_depthwise": False, "algo": "mse"}, (), "calibration algorithm alone"),
    Recipe("plain, KL", {"equalize_depthwise": False, "algo": "KL"}, ()),
    Recipe("plain, hist", {"equalize_depthwise": False, "algo": "hist"}, ()),
    Recipe("bias correction", {"equalize_depthwise": False, "bias_correction": True}, ()),
    Recipe("adaround", {"equalize_depthwise": False, "round_type": "adaround"}, (),
           "paddleslim quant_post_static round_type=adaround"),
    Recipe("brecq", {"equalize_depthwise": False, "reconstruction": "brecq"}, (),
           "paddleslim quant_recon_static, region-wise"),
    Recipe("qdrop", {"equalize_depthwise": False, "reconstruction": "qdrop"}, (),
           "paddleslim quant_recon_static, region-wise, activation quantization dropped at random"),
    Recipe("depthwise in float", {"equalize_depthwise": False}, ("depthwise_conv2d",),
           "the old remedy: every depthwise convolution kept in float"),
    Recipe("equalize", {"equalize_depthwise": True}, (), "depthwise input equalization"),
    Recipe("equalize, oneDNN calibration", {"equalize_depthwise": True, "calibration_kernels": "onednn"}, (),
           "the same one-pass calibration with its convolutions on oneDNN kernels (faster PTQ)"),
    Recipe("equalize spread 3", {"equalize_depthwise": True, "equalize_min_spread": 3.0}, (),
           "only depthwise inputs whose channels spread 3x or more (fewer per-channel requantizations)"),
    Recipe("equalize spread 6", {"equalize_depthwise": True, "equalize_min_spread": 6.0}, ()),
    Recipe("equalize spread 12", {"equalize_depthwise": True, "equalize_min_spread": 12.0}, ()),
    Recipe("equalize, mse", {"equalize_depthwise": True, "algo": "mse"}, ()),
    Recipe("equalize, KL", {"equalize_depthwise": True, "algo": "KL"}, ()),
    Recipe("equalize, hist", {"equalize_depthwise": True, "algo": "hist"}, ()),
    Recipe("equalize, abs_max", {"equalize_depthwise": True, "algo": "abs_max"}, (),
           "no clipping anywhere"),
    Recipe("equalize + conv 0.3", {"equalize_depthwise": True, "equalize_conv_strength": 0.3}, (),
           "also ordinary convolutions' inputs, partial migration into their weights"),
    Recipe("equalize, bias correction", {"equalize_depthwise": True, "bias_correction": True}, ()),
    Recipe("equalize, adaround", {"equalize_depthwise": True, "round_type": "adaround"}, ()),
    Recipe("equalize, brecq", {"equalize_depthwise": True, "reconstruction": "brecq"}, ()),
    Recipe("equalize, qdrop", {"equalize_depthwise": True, "reconstruction": "qdrop"}, ()),
)


def recipe_by_name(name: str) -> Recipe:
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    raise ConfigError(f"unknown recipe {name!r}: choose from {', '.join(r.name for r in RECIPES)}")


def apply_recipe(cfg: PTQDetConfig, recipe: Recipe, **ptq_overrides: Any) -> PTQDetConfig:
    """cfg with the recipe's PTQ keys (then ptq_overrides) and skip_op_types; skip_tensor_list kept."""
    unknown = sorted((set(recipe.ptq) | set(ptq_overrides)) - {f.name for f in dataclasses.fields(PTQSettings)})
    if unknown:
        raise ConfigError(f"recipe {recipe.name!r}: unknown PTQ keys {unknown}")
    ptq = PTQSettings(**{**cfg.ptq.to_dict(), **recipe.ptq, **ptq_overrides})
    skip_types = list(cfg.skip_op_types if recipe.skip_op_types is None else recipe.skip_op_types)
    missing = [t for t in skip_types if t not in ptq.quantizable_op_type]
    if missing:
        raise ConfigError(f"recipe {recipe.name!r}: skip_op_types {missing} are not quantized by {cfg.path}")
    return dataclasses.replace(cfg, ptq=ptq, skip_op_types=skip_types)
