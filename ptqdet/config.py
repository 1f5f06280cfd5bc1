"""Load and validate a ptqdet YAML config.

A ptqdet config is a PaddleDetection config (``_BASE_``, ``!COCODataSet``, ``EvalReader`` …,
loaded through ppdet's ``load_config``) plus our own keys (``model_dir``, ``PTQ:`` …). Every
key is checked here so that a typo fails at once with a message naming it, before any work.
"""
from __future__ import annotations

import copy
import difflib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file, key or path that cannot be used; the message names it."""


# Keys ptqdet reads. Values: one-line meaning, shown by README and error messages.
PTQDET_KEYS: dict[str, str] = {
    "input_list": "model input names to feed (list), or a {data_key: input_name} mapping",
    "model_dir": "folder of the FP32 inference model (or of the model to evaluate)",
    "model_filename": "model file inside model_dir (model.pdmodel; old exports: __model__)",
    "params_filename": "params file inside model_dir (model.pdiparams; old exports: __params__)",
    "arch": "PPYOLOE (or YOLO/PicoDet…): PPYOLOE means the model has no NMS, ptqdet runs it",
    "skip_tensor_list": "weight names (e.g. conv2d_1.w_0) of layers kept in float",
    "skip_op_types": "op types (e.g. depthwise_conv2d) whose layers are all kept in float",
    "save_dir": "output folder of analysis.py",
    "metric": "COCO or VOC",
    "num_classes": "number of classes of the model",
    "plot_hist": "analysis.py: draw activation/weight distribution plots",
    "get_target_quant_model": "analysis.py: build the model that meets target_metric",
    "target_metric": "analysis.py: mAP (0-1) the analyzed INT8 model must reach",
    "deploy_backend": "analysis.py: runtime the target model is chosen and timed for: openvino (default), paddle or "
                      "onnxruntime (per-layer float costs: openvino)",
    "PTQ": "post-training quantization settings, shared by post_quant.py and analysis.py",
    "NMS": "NMS parameters used when the model has no NMS (arch: PPYOLOE)",
    "TrainDataset": "calibration images (only the images are read)",
    "EvalDataset": "evaluation dataset (annotations required)",
    "FastEvalDataset": "analysis.py: a small evaluation set used for ranking layers",
    "EvalReader": "pre-processing (sample_transforms, batch_transforms) and batch_size",
    "worker_num": "data loader workers (ptqdet loads in the main process; kept for compatibility)",
}
# runtimes analysis.py can choose and time the target model for (the first: the default, the
# recommended CPU path; docs/deployment.md)
DEPLOY_BACKENDS = ("openvino", "paddle", "onnxruntime")
# PaddleDetection keys that may appear (usually through _BASE_) and that ptqdet ignores.
PPDET_TOLERATED_KEYS = {
    "_BASE_", "TestDataset", "TrainReader", "TestReader", "use_gpu", "use_xpu", "use_mlu", "use_npu",
    "log_iter", "snapshot_epoch", "print_flops", "print_params", "find_unused_parameters",
    "use_ema", "weights", "epoch", "filename", "eval_height", "eval_width", "eval_size",
}

PTQ_DEFAULTS: dict[str, Any] = {
    "quantizable_op_type": ["conv2d", "depthwise_conv2d"],
    "algo": "KL",
    "weight_quantize_type": "channel_wise_abs_max",
    "activation_quantize_type": "range_abs_max",
    "is_full_quantize": False,
    "batch_size": 10,
    "batch_nums": 10,
    "hist_percent": 0.999,
    "bias_correction": False,
    "round_type": "round",
    "onnx_format": False,
    "equalize_depthwise": False,
    "equalize_strength": 1.0,
    "equalize_conv_strength": 0.0,
    "equalize_min_spread": 1.0,
    "reconstruction": "none",
    "recon_epochs": 20,
    "calibration_kernels": "plain",
}
PTQ_ALGOS = ("KL", "hist", "avg", "mse", "emd", "abs_max", "min_max", "ptf")
WEIGHT_TYPES = ("abs_max", "channel_wise_abs_max")
ACT_TYPES = ("range_abs_max", "moving_average_abs_max", "abs_max")
ROUND_TYPES = ("round", "adaround")
# paddleslim quant_recon_static: none, AdaRound (layer-wise), BRECQ (region-wise), QDrop (region-wise
# with activation quantization dropped at random while the rounding is learned)
RECONSTRUCTIONS = ("none", "adaround", "brecq", "qdrop")
# the kernels of ptqdet's one-pass calibration (ptqdet.calibration): the convolutions on oneDNN,
# or every op on Paddle's plain kernels (bit-identical to paddleslim's own sampling)
CALIBRATION_KERNELS = ("onednn", "plain")

# PTQ keys ptqdet applies itself (ptqdet.recovery, quant_recon_static), not paddleslim's PTQ
RECOVERY_KEYS = ("equalize_depthwise", "equalize_strength", "equalize_conv_strength", "equalize_min_spread",
                 "reconstruction", "recon_epochs", "calibration_kernels")

# arch values whose exports have no NMS: ptqdet applies the NMS: settings after the model
NMS_OUTSIDE_ARCHS = ("PPYOLOE", "PPYOLOE+", "PP-YOLOE", "YOLOE")

NMS_DEFAULTS: dict[str, Any] = {  # PP-YOLOE's MultiClassNMS in PaddleDetection
    "score_threshold": 0.01,
    "nms_threshold": 0.7,
    "nms_top_k": 1000,
    "keep_top_k": 300,
}


@dataclass
class PTQSettings:
    """The `PTQ:` section. One instance drives post_quant.py and analysis.py alike."""

    quantizable_op_type: list[str] = field(default_factory=lambda: list(PTQ_DEFAULTS["quantizable_op_type"]))
    algo: str = PTQ_DEFAULTS["algo"]
    weight_quantize_type: str = PTQ_DEFAULTS["weight_quantize_type"]
    activation_quantize_type: str = PTQ_DEFAULTS["activation_quantize_type"]
    is_full_quantize: bool = PTQ_DEFAULTS["is_full_quantize"]
    batch_size: int = PTQ_DEFAULTS["batch_size"]
    batch_nums: int = PTQ_DEFAULTS["batch_nums"]
    hist_percent: float = PTQ_DEFAULTS["hist_percent"]
    bias_correction: bool = PTQ_DEFAULTS["bias_correction"]
    round_type: str = PTQ_DEFAULTS["round_type"]
    onnx_format: bool = PTQ_DEFAULTS["onnx_format"]
    equalize_depthwise: bool = PTQ_DEFAULTS["equalize_depthwise"]
    equalize_strength: float = PTQ_DEFAULTS["equalize_strength"]
    equalize_conv_strength: float = PTQ_DEFAULTS["equalize_conv_strength"]
    equalize_min_spread: float = PTQ_DEFAULTS["equalize_min_spread"]
    reconstruction: str = PTQ_DEFAULTS["reconstruction"]
    recon_epochs: int = PTQ_DEFAULTS["recon_epochs"]
    calibration_kernels: str = PTQ_DEFAULTS["calibration_kernels"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def paddleslim_dict(self) -> dict[str, Any]:
        """The keys paddleslim's PostTrainingQuantization takes (ptqdet's recovery keys left out)."""
        return {k: v for k, v in asdict(self).items() if k not in RECOVERY_KEYS}


@dataclass
class NMSSettings:
    score_threshold: float = NMS_DEFAULTS["score_threshold"]
    nms_threshold: float = NMS_DEFAULTS["nms_threshold"]
    nms_top_k: int = NMS_DEFAULTS["nms_top_k"]
    keep_top_k: int = NMS_DEFAULTS["keep_top_k"]
    background_label: int = -1  # a class the NMS drops (SSD's); from the model's own NMS op, not a config key


@dataclass
class PTQDetConfig:
    """Our validated view of a config; `ppdet` is the full PaddleDetection config."""

    path: Path
    model_dir: Path
    model_filename: str
    params_filename: str
    input_list: list[str] | dict[str, str]
    arch: str
    metric: str
    num_classes: int
    skip_tensor_list: list[str]
    skip_op_types: list[str]
    save_dir: Path | None
    plot_hist: bool
    get_target_quant_model: bool
    target_metric: float | None
    ptq: PTQSettings
    nms: NMSSettings
    ppdet: Any  # ppdet AttrDict: this config's own copy (use_workspace puts it back in ppdet's global dict)
    deploy_backend: str = "openvino"

    @property
    def nms_outside(self) -> bool:
        """True when the exported model has no NMS and ptqdet must apply it."""
        return self.arch.upper() in NMS_OUTSIDE_ARCHS

    @property
    def feed_names(self) -> dict[str, str]:
        """{data key: model input name}."""
        if isinstance(self.input_list, dict):
            return dict(self.input_list)
        return {name: name for name in self.input_list}

    def has_dataset(self, key: str) -> bool:
        return key in self.ppdet and self.ppdet[key] is not None


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_user_yaml(path: Path) -> dict:
    """Top-level keys of the file itself (tags like !COCODataSet are kept as opaque nodes)."""

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


# keys of a section that a user may write at the top level by mistake (onnx_format under PTQ:)
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "EvalReader": ("sample_transforms", "batch_transforms", "batch_size", "shuffle", "drop_last"),
    "TrainDataset, EvalDataset or FastEvalDataset": ("image_dir", "anno_path", "dataset_dir", "label_list"),
}


def _sections_of(key: str) -> list[str]:
    """The sections (PTQ, NMS, EvalReader, the datasets) that have a setting named `key`."""
    sections = [name for name, keys in (("PTQ", PTQ_DEFAULTS), ("NMS", NMS_DEFAULTS)) if key in keys]
    return sections + [name for name, keys in SECTION_KEYS.items() if key in keys]


def _check_keys(path: Path, data: dict) -> None:
    allowed = set(PTQDET_KEYS) | PPDET_TOLERATED_KEYS
    for key in data:
        if key not in allowed:
            sections = _sections_of(str(key))
            if sections:
                where = " or of ".join(f"the {s} section" if " " not in s else s for s in sections)
                under = f"under {sections[0]}:" if len(sections) == 1 and " " not in sections[0] else "there"
                raise ConfigError(f"{path}: unknown config key {key!r} at the top level: it is a setting of "
                                  f"{where}; indent it {under}")
            raise ConfigError(f"{path}: unknown config key {key!r}{_suggest(str(key), sorted(allowed))}")
    for section, known in (("PTQ", PTQ_DEFAULTS), ("NMS", NMS_DEFAULTS)):
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {section!r} must be a mapping of settings")
        for key in raw:
            if key in known:
                continue
            if key in PTQDET_KEYS:
                raise ConfigError(f"{path}: unknown key '{section}.{key}': {key} is a top-level key, not a "
                                  f"{section} setting; write it without indentation")
            other = [s for s in _sections_of(str(key)) if s != section]
            if other:
                raise ConfigError(f"{path}: unknown key '{section}.{key}': it is a setting of the {other[0]} section")
            raise ConfigError(f"{path}: unknown key '{section}.{key}'{_suggest(str(key), sorted(known))}")


def _base_files(path: Path, data: dict) -> list[Path]:
    """The files a config's _BASE_ names, resolved as PaddleDetection does (relative to the
    config's folder, ~ expanded); ConfigError unless _BASE_ is a list of file names."""
    bases = data.get("_BASE_")
    if bases is None:
        return []
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: _BASE_ must be a list of config files, e.g. _BASE_: ['base.yml'], got {bases!r}")
    out = []
    for base in bases:
        base = str(Path(base).expanduser()) if base.startswith("~") else base
        out.append(Path(base) if base.startswith("/") else path.parent / base)
    return out


def _chain(files: list[Path]) -> str:
    """The files of a _BASE_ chain, each after the first named from the first one's folder."""
    root = files[0].parent

    def short(f: Path) -> str:
        f = Path(os.path.normpath(f))  # sub/../c.yml -> c.yml (as written, not resolved: links stay)
        try:
            return str(f.relative_to(os.path.normpath(root)))
        except ValueError:
            return str(f)

    return " -> ".join([str(files[0]), *(short(f) for f in files[1:])])


def check_bases(path: Path) -> None:
    """Every _BASE_ file of the config, and theirs, exists, is a YAML mapping and is included
    once on each chain; ConfigError naming the chain of files otherwise (PaddleDetection itself
    answers a cycle with "maximum recursion depth exceeded" and a missing file with a bare
    FileNotFoundError)."""

    def visit(file: Path, chain: list[Path], data: dict) -> None:
        for base in _base_files(file, data):
            if any(base.resolve() == c.resolve() for c in chain):
                raise ConfigError(f"{path}: _BASE_ cycle: {_chain([*chain, base])} (a config cannot include itself)")
            if not base.is_file():
                what = "is a folder, not a config file" if base.is_dir() else "not found"
                raise ConfigError(f"{path}: _BASE_ file {what}: {base} (chain: {_chain([*chain, base])})")
            try:
                text = base.read_text()
                base_data = _read_user_yaml(base) if text.strip() else None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: _BASE_ file {base} cannot be read ({exc}; chain: "
                                  f"{_chain([*chain, base])})") from exc
            except ConfigError as exc:
                raise ConfigError(f"{exc} (a _BASE_ of {path}; chain: {_chain([*chain, base])})") from exc
            if base_data is None:
                raise ConfigError(f"{path}: _BASE_ file {base} is empty (chain: {_chain([*chain, base])})")
            visit(base, [*chain, base], base_data)

    visit(path, [path], _read_user_yaml(path))


_PRISTINE_WORKSPACE: dict | None = None


def _reset_ppdet_workspace() -> None:
    """ppdet merges every loaded config into one global dict; start each load from a clean one.

    The registered modules live in that dict too, so it is restored to its state before the
    first load: same entries, and each entry's own items (one level deep, which is what
    ppdet's merge changes for registered modules).
    """
    global _PRISTINE_WORKSPACE  # noqa: PLW0603 - ppdet's own state is global; we only snapshot it
    from ppdet.core import workspace

    gc = workspace.global_config
    if _PRISTINE_WORKSPACE is None:
        _PRISTINE_WORKSPACE = {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in gc.items()}
    gc.clear()
    for key, (value, items) in _PRISTINE_WORKSPACE.items():
        if items is not None:
            value.clear()
            value.update(items)
        gc[key] = value


def _own_copy(loaded: Any) -> Any:
    """A loaded ppdet config apart from ppdet's global dict, which the next load resets in place:
    its entries, and each dict entry's own items (one level deep, what ppdet's merge changes)."""
    return type(loaded)(**{key: copy.copy(value) if isinstance(value, dict) else value
                           for key, value in loaded.items()})


def use_workspace(cfg: PTQDetConfig) -> None:
    """Make `cfg` the config ppdet's `create` reads (its readers, transforms), whichever config
    this process loaded since: a config kept from an earlier load would otherwise get the
    transforms of the last one loaded."""
    from ppdet.core import workspace

    workspace.global_config.clear()
    workspace.global_config.update(cfg.ppdet)


def _ptq_settings(path: Path, raw: dict) -> PTQSettings:
    values = {**PTQ_DEFAULTS, **(raw or {})}
    settings = PTQSettings(**{f.name: values[f.name] for f in fields(PTQSettings)})
    if settings.algo not in PTQ_ALGOS:
        raise ConfigError(f"{path}: PTQ.algo {settings.algo!r} is not one of {', '.join(PTQ_ALGOS)}")
    if settings.weight_quantize_type not in WEIGHT_TYPES:
        raise ConfigError(f"{path}: PTQ.weight_quantize_type {settings.weight_quantize_type!r} "
                          f"is not one of {WEIGHT_TYPES}")
    if settings.activation_quantize_type not in ACT_TYPES:
        raise ConfigError(f"{path}: PTQ.activation_quantize_type {settings.activation_quantize_type!r} "
                          f"is not one of {ACT_TYPES}")
    if settings.round_type not in ROUND_TYPES:
        raise ConfigError(f"{path}: PTQ.round_type {settings.round_type!r} is not one of {ROUND_TYPES}")
    if settings.reconstruction not in RECONSTRUCTIONS:
        raise ConfigError(f"{path}: PTQ.reconstruction {settings.reconstruction!r} is not one of {RECONSTRUCTIONS}")
    for name in ("batch_size", "batch_nums", "recon_epochs"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path}: PTQ.{name} must be a positive integer, got {value!r}")
    for name in ("is_full_quantize", "bias_correction", "onnx_format", "equalize_depthwise"):
        if not isinstance(getattr(settings, name), bool):
            raise ConfigError(f"{path}: PTQ.{name} must be True or False, got {getattr(settings, name)!r}")
    strength = settings.equalize_strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ConfigError(f"{path}: PTQ.equalize_strength must be a number in (0, 1], got {strength!r}")
    conv = settings.equalize_conv_strength
    if isinstance(conv, bool) or not isinstance(conv, (int, float)) or not 0 <= conv < 1:
        raise ConfigError(f"{path}: PTQ.equalize_conv_strength must be a number in [0, 1), got {conv!r}")
    spread = settings.equalize_min_spread
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread >= 1:
        raise ConfigError(f"{path}: PTQ.equalize_min_spread must be a number >= 1, got {spread!r}")
    if conv > 0 and not settings.equalize_depthwise:
        raise ConfigError(f"{path}: PTQ.equalize_conv_strength needs PTQ.equalize_depthwise: True")
    if not isinstance(settings.hist_percent, (int, float)) or not 0 < settings.hist_percent <= 1:
        raise ConfigError(f"{path}: PTQ.hist_percent must be a number in (0, 1], got {settings.hist_percent!r}")
    if settings.reconstruction != "none" and settings.round_type == "adaround":
        raise ConfigError(f"{path}: PTQ.round_type adaround and PTQ.reconstruction {settings.reconstruction!r} "
                          "both learn the rounding: choose one")
    if settings.calibration_kernels not in CALIBRATION_KERNELS:
        raise ConfigError(f"{path}: PTQ.calibration_kernels must be one of {', '.join(CALIBRATION_KERNELS)}, "
                          f"got {settings.calibration_kernels!r}")
    if not isinstance(settings.quantizable_op_type, list) or not settings.quantizable_op_type:
        raise ConfigError(f"{path}: PTQ.quantizable_op_type must be a non-empty list of op types")
    return settings


# ranges of float settings: (low, low included, high included); types come from the defaults.
# Integer settings must be positive (NMS top-k: or -1, no limit).
SETTING_RANGES: dict[str, tuple[float, bool, float]] = {
    "PTQ.hist_percent": (0.0, False, 1.0),
    "NMS.score_threshold": (0.0, True, 1.0),
    "NMS.nms_threshold": (0.0, False, 1.0),
}


def _type_error(path: Path, key: str, value: Any, default: Any) -> ConfigError | None:
    """The error for a value whose type differs from its default's, or that is out of range."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else ConfigError(f"{path}: {key} must be True or False, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return ConfigError(f"{path}: {key} must be an integer, got {value!r}")
        if value < 1 and not (key.startswith("NMS.") and value == -1):
            return ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
        return None
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ConfigError(f"{path}: {key} must be a number, got {value!r}")
        low, closed_low, high = SETTING_RANGES.get(key, (float("-inf"), True, float("inf")))
        if not ((low <= value if closed_low else low < value) and value <= high):
            return ConfigError(f"{path}: {key} must be in {'[' if closed_low else '('}{low:g}, {high:g}], "
                               f"got {value!r}")
        return None
    if isinstance(default, str):
        return None if isinstance(value, str) else ConfigError(f"{path}: {key} must be a string, got {value!r}")
    if isinstance(default, list) and not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return ConfigError(f"{path}: {key} must be a non-empty list of names, got {value!r}")
    return None


def _check_section_types(path: Path, section: str, raw: Any, defaults: dict[str, Any]) -> None:
    """Each value of a `PTQ:`/`NMS:` section has its default's type and lies in its range."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {section!r} must be a mapping of settings")
    for key, value in raw.items():
        error = _type_error(path, f"{section}.{key}", value, defaults[key])
        if error is not None:
            raise error


def _check_top_level_types(path: Path, cfg: Any) -> None:
    """Types of the top-level ptqdet keys, and keys that contradict each other."""
    expected = {"model_dir": str, "model_filename": str, "params_filename": str, "arch": str, "save_dir": str,
                "num_classes": int, "worker_num": int, "plot_hist": bool, "get_target_quant_model": bool}
    for key, kind in expected.items():
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} must be {'a' if kind is not int else 'an'} {kind.__name__}, "
                              f"got {value!r}")
    if cfg.get("num_classes") is not None and cfg["num_classes"] < 1:
        raise ConfigError(f"{path}: num_classes must be a positive integer, got {cfg['num_classes']!r}")
    input_list = cfg.get("input_list")
    names = list(input_list.values()) if isinstance(input_list, dict) else input_list
    if isinstance(names, list) and not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{path}: input_list must name model inputs (strings), got {input_list!r}")
    if cfg.get("NMS") and str(cfg.get("arch", "")).upper() not in NMS_OUTSIDE_ARCHS:
        raise ConfigError(f"{path}: NMS is only used with arch: PPYOLOE (a model without NMS), "
                          f"but arch is {cfg.get('arch')!r}")


def load_config(path: str | Path) -> PTQDetConfig:
    """Load, merge (_BASE_) and validate a ptqdet config. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".yml", ".yaml"):
        raise ConfigError(f"{path}: a config must be a .yml or .yaml file")
    _check_keys(path, _read_user_yaml(path))
    check_bases(path)

    from ppdet.core.workspace import load_config as ppdet_load_config

    _reset_ppdet_workspace()
    try:
        cfg = ppdet_load_config(str(path))
    except Exception as exc:  # ppdet raises assorted errors for bad _BASE_ or tags
        raise ConfigError(f"{path}: PaddleDetection could not load it: {exc}") from exc
    return _validated(path, cfg)


def _validated(path: Path, cfg: Any) -> PTQDetConfig:
    """Our view of a loaded (merged) ppdet config, every key checked. Raises ConfigError."""
    _check_keys(path, {k: v for k, v in cfg.items() if k in PTQDET_KEYS})
    _check_top_level_types(path, cfg)
    _check_section_types(path, "PTQ", cfg.get("PTQ"), PTQ_DEFAULTS)
    _check_section_types(path, "NMS", cfg.get("NMS"), NMS_DEFAULTS)

    for required in ("model_dir", "EvalReader"):
        if cfg.get(required) is None:
            raise ConfigError(f"{path}: missing required key {required!r}")
    metric = str(cfg.get("metric", "COCO"))
    if metric.upper() not in ("COCO", "VOC"):
        raise ConfigError(f"{path}: metric {metric!r} is not COCO or VOC")
    target = cfg.get("target_metric")
    if target is not None and not (isinstance(target, (int, float)) and 0 <= float(target) <= 1):
        raise ConfigError(f"{path}: target_metric must be an mAP between 0 and 1, got {target!r}")
    deploy_backend = str(cfg.get("deploy_backend", DEPLOY_BACKENDS[0]))
    if deploy_backend not in DEPLOY_BACKENDS:
        raise ConfigError(f"{path}: deploy_backend {deploy_backend!r} is not one of {', '.join(DEPLOY_BACKENDS)}")
    input_list = cfg.get("input_list", ["image", "scale_factor"])
    if not isinstance(input_list, (list, dict)) or not input_list:
        raise ConfigError(f"{path}: input_list must be a list of input names or a mapping")
    skip = cfg.get("skip_tensor_list") or []
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise ConfigError(f"{path}: skip_tensor_list must be a list of weight names")
    ptq = _ptq_settings(path, cfg.get("PTQ"))
    skip_types = cfg.get("skip_op_types") or []
    if not isinstance(skip_types, list) or not all(isinstance(s, str) for s in skip_types):
        raise ConfigError(f"{path}: skip_op_types must be a list of op types (e.g. [depthwise_conv2d])")
    not_quantized = [t for t in skip_types if t not in ptq.quantizable_op_type]
    if not_quantized:
        raise ConfigError(f"{path}: skip_op_types {not_quantized} are not in PTQ.quantizable_op_type "
                          f"{ptq.quantizable_op_type}: their layers are not quantized anyway")
    return PTQDetConfig(
        path=path,
        model_dir=Path(str(cfg["model_dir"])),
        model_filename=str(cfg.get("model_filename") or "model.pdmodel"),
        params_filename=str(cfg.get("params_filename") or "model.pdiparams"),
        input_list=input_list,
        arch=str(cfg.get("arch", "")),
        metric=metric.upper(),
        num_classes=int(cfg.get("num_classes", 80)),
        skip_tensor_list=list(skip),
        skip_op_types=list(skip_types),
        save_dir=Path(str(cfg["save_dir"])) if cfg.get("save_dir") else None,
        plot_hist=bool(cfg.get("plot_hist", True)),
        get_target_quant_model=bool(cfg.get("get_target_quant_model", False)),
        target_metric=float(target) if target is not None else None,
        ptq=ptq,
        nms=NMSSettings(**{**NMS_DEFAULTS, **(cfg.get("NMS") or {})}),
        ppdet=_own_copy(cfg),
        deploy_backend=deploy_backend,
    )
