"""Post-training quantization with paddleslim's quant_post_static, written atomically."""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, PTQDetConfig, PTQSettings
from .data import calibration_loader, check_dataset
from .files import ModelFiles, check_output_dir, resolve_model_files
from .paddle_static import (
    DEQUANT_PREFIXES,
    WEIGHT_DEQUANT_PREFIXES,
    atomic_dir,
    fast_ir_graph,
    loaded_program,
    observe_single_versions,
    replace_dir,
    static_mode,
    weight_slot,
)
from .program import ProgramInfo, check_config_model, read_program

SAVED_FILES = ("model.pdmodel", "model.pdiparams")
# Paddle modules that draw their own tqdm bars during quant_post_static
PADDLE_BAR_MODULES = ("paddle.static.quantization.post_training_quantization",
                      "paddle.static.quantization.quantization_pass")


@dataclass
class QuantizeResult:
    save_dir: Path
    seconds: float
    settings: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    quantized_layers: list[str] = field(default_factory=list)


def check_outputs(cfg: PTQDetConfig, save_dir: Path) -> ModelFiles:
    """Everything that must hold before quantizing; raises ConfigError, writes nothing."""
    files = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    check_output_dir(save_dir, files.model_dir)
    check_config_model(cfg, files)
    check_dataset(cfg, "TrainDataset", need_annotations=False)
    return files


def layer_weights(files: ModelFiles, op_types: list[str] | None = None, program: ProgramInfo | None = None
                  ) -> list[str]:
    """Weight names of the quantizable layers, in program order (e.g. conv2d_1.w_0).
    `program`: the model's program, if already read."""
    program = program or read_program(files)
    names: list[str] = []
    for op in program.ops:
        slot = weight_slot(op.type)
        if slot and (op_types is None or op.type in op_types):
            names.extend(n for n in op.inputs.get(slot, []) if n in program.persistables and n not in names)
    return names


def skip_weights(cfg: PTQDetConfig, files: ModelFiles, skip_tensor_list: list[str]) -> list[str]:
    """skip_tensor_list plus the weights of every layer whose op type is in cfg.skip_op_types;
    ConfigError if skip_tensor_list names a weight the model has no layer for.

    Paddle's oneDNN INT8 run turns depthwise_conv2d into conv2d and quantizes it from the
    scales around it even when PTQ.quantizable_op_type leaves it out: a layer stays in float
    only when PTQ skips it by name, as this list does."""
    program = read_program(files)
    known = set(layer_weights(files, program=program))
    unknown = [name for name in skip_tensor_list if name not in known]
    if unknown:
        raise ConfigError(f"{cfg.path}: skip_tensor_list names weights the model has no layer for: {unknown}")
    by_type = layer_weights(files, cfg.skip_op_types, program) if cfg.skip_op_types else []
    return list(dict.fromkeys([*skip_tensor_list, *by_type]))


def quantized_weights(files: ModelFiles) -> set[str]:
    """Weights that the quantized program dequantizes (they run in INT8)."""
    program = read_program(files)
    ops = program.ops
    quantized = set()
    for op in ops:  # QDQ (onnx_format) models dequantize the weight itself
        if op.type.startswith(WEIGHT_DEQUANT_PREFIXES):
            quantized.update(n for n in op.inputs.get("X", []) if n in program.persistables)
    for op in ops:  # fake-quant models store int8 weights and dequantize the conv output
        slot = weight_slot(op.type)
        if not slot:
            continue
        outs = [n for names in op.outputs.values() for n in names]
        consumers = [o for o in ops if any(n in outs for names in o.inputs.values() for n in names)]
        if any(c.type.startswith(DEQUANT_PREFIXES) for c in consumers):
            quantized.update(op.inputs.get(slot, []))
    return quantized


@contextlib.contextmanager
def paddle_bars(show: bool) -> Iterator[None]:
    """Paddle's PTQ draws its own progress bars ("Sampling stage", "Adding quant op"); hide
    them when the caller's progress is off (--quiet), and only them."""
    if show:
        yield
        return
    modules = [importlib.import_module(name) for name in PADDLE_BAR_MODULES]
    saved = [(module, module.tqdm) for module in modules if hasattr(module, "tqdm")]
    for module, bar in saved:
        module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for module, bar in saved:
            module.tqdm = bar


def error_detail(exc: BaseException) -> str:
    """The line of a library's (often multi-line) exception message that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if re.match(r"\(?\w+\)? ?\w*Error|\(\w+\)", ln)), None)
    return " ".join((detail or (lines[-1] if lines else "")).split())


PADDLE_PTQ_FILE = "paddle/static/quantization/post_training_quantization.py"


def ptq_error(exc: BaseException) -> ConfigError | None:
    """Paddle's post-training quantization failed inside (on ops it only observes, as it did on
    RetinaNet's and YOLOF's exports before ptqdet calibrated them itself, and on TOOD's before
    paddle_static.observe_single_versions): one line naming where and what to try; None when the
    failure did not arise in Paddle's PTQ (a bug elsewhere: let it show)."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    frames = re.findall(r'File "[^"]*' + re.escape(PADDLE_PTQ_FILE) + r'", line \d+, in (\w+)', text)
    if not frames:
        return None
    where = f"Paddle 2.6's post-training quantization ({frames[-1]})"
    if isinstance(exc, IndexError) and "_sample_avg" in frames:
        return ConfigError(f"PTQ.algo avg cannot calibrate this export: {where} reshapes every sampled activation "
                           "to [batch, -1] and fails on its 0-D tensors (shape arithmetic); set PTQ.algo: abs_max")
    # the variable a sampler misses is named by a set's order: not part of the line
    detail = re.sub(r"Cannot find \S+ in scope", "Cannot find a sampled variable in scope", error_detail(exc))
    return ConfigError(f"{where} failed on this export ({type(exc).__name__}: {detail[:300]}) on ops it only "
                       "observes; no ptqdet setting is known to avoid it: deploy this model in FP32")


def calibrate(files: ModelFiles, out_dir: Path, fp32_dir: Path, loader, settings: PTQSettings,
              skip_tensor_list: list[str], device: str = "cpu", progress: bool = True, keep_fp32: bool = False
              ) -> bool:
    """Write the INT8 model of files to out_dir, with a failure inside Paddle's PTQ turned into
    one line (ptq_error). On CPU with a maxima algorithm (ptqdet.calibration.supports) the
    statistics come from one pass of the FP32 model; otherwise (or where the model's
    activations cannot be reduced in the graph) from paddleslim's own sampling, after the
    recovery step's own pass. Returns whether the recovered FP32 model (PTQ.equalize_depthwise)
    is in fp32_dir (always written on paddleslim's path; on the one-pass path when keep_fp32)."""
    from .calibration import StatisticsUnsupported, supports

    try:
        if device == "cpu" and supports(settings):
            try:
                return one_pass_ptq(files, out_dir, fp32_dir, loader, settings, skip_tensor_list, progress, keep_fp32)
            except StatisticsUnsupported:
                shutil.rmtree(fp32_dir, ignore_errors=True)  # paddleslim's sampling below, from the start
        source, maxima = recover_fp32(files, fp32_dir, loader, settings, skip_tensor_list)
        run_paddle_ptq(source, out_dir, loader, settings, skip_tensor_list, device, progress)
        if maxima:  # equalized inputs: no clipping, whatever the calibration algorithm
            from .recovery import set_activation_maxima

            set_activation_maxima(ModelFiles(out_dir, *SAVED_FILES), maxima)
        return source.model_dir == fp32_dir
    except ConfigError:
        raise
    except Exception as exc:
        error = ptq_error(exc)
        if error is None:
            raise
        raise error from exc


def one_pass_ptq(files: ModelFiles, out_dir: Path, fp32_dir: Path, loader, settings: PTQSettings,
                 skip_tensor_list: list[str], progress: bool = True, keep_fp32: bool = False) -> bool:
    """PTQ (and PTQ.equalize_depthwise) from one forward pass of the FP32 model
    (ptqdet.calibration); raises StatisticsUnsupported before writing anything where the
    activations cannot be reduced in the graph. Returns whether fp32_dir was written."""
    from .calibration import collect_statistics, post_training_quantization, quantize_from_statistics
    from .model import default_threads
    from .recovery import equalization_targets, equalize_program, save_equalized

    equalize = bool(settings.equalize_depthwise)
    with loaded_program(files) as model, paddle_bars(progress), fast_ir_graph(), observe_single_versions():
        ptq = post_training_quantization(model, loader, settings, skip_tensor_list,
                                         program=model.program.clone() if equalize else None)
        targets = equalization_targets(model.program.global_block(), settings.equalize_strength, skip_tensor_list,
                                       settings.equalize_conv_strength) if equalize else []
        stats = collect_statistics(model.program, model.scope, model.place, model.feed_names, loader,
                                   sorted(ptq._quantized_act_var_name),
                                   list(dict.fromkeys(op.input("Input")[0] for op in targets)), progress,
                                   onednn=settings.calibration_kernels == "onednn", threads=default_threads())
        maxima: dict[str, float] = {}
        if equalize:
            maxima = equalize_program(model, stats.channel_max, settings.equalize_strength, skip_tensor_list,
                                      settings.equalize_conv_strength, settings.equalize_min_spread).input_max
            equalized = model.program.clone()  # saving appends its output ops to the program it saves
            if keep_fp32:
                save_equalized(model, fp32_dir, files)
            ptq = post_training_quantization(model, loader, settings, skip_tensor_list, program=equalized)
        quantize_from_statistics(ptq, stats, maxima, out_dir, SAVED_FILES)
    return equalize and keep_fp32


def run_paddle_ptq(files: ModelFiles, out_dir: Path, loader, settings: PTQSettings,
                   skip_tensor_list: list[str], device: str = "cpu", progress: bool = True) -> None:
    """paddleslim's calibration (quant_post_static), or its reconstruction (quant_recon_static)
    when settings.reconstruction is not none."""
    import paddle
    from paddleslim.quant import quant_post_static, quant_recon_static

    from .recon import fast_reconstruction, hard_adaround

    common = dict(model_dir=str(files.model_dir), quantize_model_path=str(out_dir), data_loader=loader,
                  model_filename=files.model_filename, params_filename=files.params_filename,
                  save_model_filename=SAVED_FILES[0], save_params_filename=SAVED_FILES[1],
                  batch_size=settings.batch_size, batch_nums=settings.batch_nums, algo=settings.algo,
                  hist_percent=settings.hist_percent, bias_correction=settings.bias_correction,
                  quantizable_op_type=list(settings.quantizable_op_type), is_full_quantize=settings.is_full_quantize,
                  activation_quantize_type=settings.activation_quantize_type,
                  weight_quantize_type=settings.weight_quantize_type, onnx_format=settings.onnx_format,
                  skip_tensor_list=list(skip_tensor_list) or None)
    # a scope of its own: paddleslim calibrates in the global scope, where a model quantized earlier
    # in the same process left variables of the same names (conv2d_0.w_0, ...); what PTQ then did
    # (and how it failed on YOLOF) depended on which models came before
    with static_mode(), paddle_bars(progress), fast_ir_graph(), observe_single_versions(), \
            paddle.static.scope_guard(paddle.static.Scope()):
        executor = paddle.static.Executor(paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace())
        if settings.reconstruction == "none":
            with hard_adaround():
                quant_post_static(executor=executor, round_type=settings.round_type, **common)
        else:
            with fast_reconstruction():
                quant_recon_static(executor=executor, epochs=settings.recon_epochs,
                                   recon_level="layer-wise" if settings.reconstruction == "adaround" else "region-wise",
                                   simulate_activation_quant=settings.reconstruction == "qdrop", **common)


def recover_fp32(files: ModelFiles, out_dir: Path, loader, settings: PTQSettings, skip_tensor_list: list[str]
                 ) -> tuple[ModelFiles, dict[str, float]]:
    """The FP32 model PTQ calibrates: `files` itself, or (PTQ.equalize_depthwise) an equivalent
    FP32 model with equalized depthwise inputs written to out_dir; and the max |x| of each
    equalized input (their INT8 steps after calibration)."""
    if not settings.equalize_depthwise:
        return files, {}
    from .recovery import equalize_depthwise_inputs

    result = equalize_depthwise_inputs(files, out_dir, list(loader), settings.equalize_strength, skip_tensor_list,
                                       conv_strength=settings.equalize_conv_strength,
                                       min_spread=settings.equalize_min_spread)
    return ModelFiles(Path(out_dir), *SAVED_FILES), result.input_max


def quantize_files(cfg: PTQDetConfig, files: ModelFiles, save_dir: Path, settings: PTQSettings,
                   skip_tensor_list: list[str], device: str = "cpu", progress: bool = True,
                   recovered_dir: Path | None = None) -> tuple[float, list[str]]:
    """Calibrate and write the INT8 model to save_dir atomically, with the layers of
    skip_tensor_list and of cfg.skip_op_types in float; returns the seconds spent and the
    weights of the layers kept in float. recovered_dir: where to keep the FP32 model that
    recovery (PTQ.equalize_depthwise) made, if any (moved there once the INT8 model is written;
    default: not kept).

    The recovered FP32 model is written to a hidden temporary folder beside save_dir
    (`.<save_dir>.tmp<pid>.fp32`), removed on the way out whatever ends the block (an error,
    or a signal, which ptqdet.cli turns into an exception); temporaries that a killed run
    (SIGKILL, power loss) left beside save_dir are removed first."""
    skip_tensor_list = skip_weights(cfg, files, skip_tensor_list)
    loader = interruptible(calibration_loader(cfg, settings.batch_size, settings.batch_nums, progress=progress))
    start = time.perf_counter()
    remove_stale_temporaries(Path(save_dir))
    with atomic_dir(save_dir, create=False) as tmp_dir:
        fp32_dir = tmp_dir.with_name(f"{tmp_dir.name}{RECOVERED_SUFFIX}")
        try:
            recovered = calibrate(files, tmp_dir, fp32_dir, loader, settings, skip_tensor_list, device, progress,
                                  keep_fp32=recovered_dir is not None)
            infer_cfg = files.model_dir / "infer_cfg.yml"
            if infer_cfg.is_file():
                shutil.copy2(infer_cfg, tmp_dir / "infer_cfg.yml")
            if recovered_dir is not None and recovered:
                Path(recovered_dir).parent.mkdir(parents=True, exist_ok=True)
                replace_dir(fp32_dir, Path(recovered_dir))
        finally:
            shutil.rmtree(fp32_dir, ignore_errors=True)
    return time.perf_counter() - start, skip_tensor_list


def interruptible(loader):
    """The calibration loader (a paddle.io.DataLoader of pre-loaded batches), checking before
    each batch it gives (to the recovery step, to paddleslim's sampling) whether a signal asked
    the script to stop (ptqdet.signals.check_interrupted): a library that swallowed the exception
    the signal raised does not keep the calibration going."""
    from .signals import check_interrupted

    class Interruptible(type(loader)):
        def __init__(self, inner):  # no super().__init__: the inner loader holds the batches
            self.inner = inner
            self.batch_size = getattr(inner, "batch_size", None)

        def __len__(self) -> int:
            return len(self.inner)

        def __iter__(self):
            for batch in self.inner:
                check_interrupted()
                yield batch

        def __call__(self):
            return iter(self)

    return Interruptible(loader)


# atomic_dir's temporary is .<name>.tmp<pid>; the recovered FP32 model's is that + RECOVERED_SUFFIX
RECOVERED_SUFFIX = ".fp32"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(?:\.fp32)?$")


def remove_stale_temporaries(save_dir: Path) -> list[Path]:
    """Remove the temporaries of save_dir (atomic_dir's and the recovered FP32 model's) that a
    process no longer running left beside it; a live process's (another run writing the same
    save_dir) are kept. Returns what was removed."""
    parent = Path(save_dir).parent
    if not parent.is_dir():
        return []
    removed = []
    for path in parent.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] != Path(save_dir).name or _process_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier call in this process that ended without cleaning: stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def quantize(cfg: PTQDetConfig, save_dir: Path, device: str = "cpu", algo: str | None = None,
             progress: bool = True) -> QuantizeResult:
    """Quantize cfg's model with cfg.ptq into save_dir (model.pdmodel, model.pdiparams, infer_cfg.yml)."""
    save_dir = Path(save_dir)
    files = check_outputs(cfg, save_dir)
    settings = PTQSettings(**{**cfg.ptq.to_dict(), **({"algo": algo} if algo else {})})
    seconds, skipped = quantize_files(cfg, files, save_dir, settings, cfg.skip_tensor_list, device, progress)
    out_files = ModelFiles(save_dir, *SAVED_FILES)
    return QuantizeResult(save_dir=save_dir, seconds=seconds, settings=settings.to_dict(), skipped=skipped,
                          quantized_layers=sorted(quantized_weights(out_files)))
