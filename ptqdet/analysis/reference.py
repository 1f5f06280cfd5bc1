"""paddleslim's own `Analysis` (the reference tool), run on ptqdet's data and metric and instrumented.

Used to compare ptqdet's analysis with the reference side by side (tools/bench_analysis.py):
the same FP32 model, the same `PTQ:` settings, the same calibration images
(ptqdet.data.calibration_loader) and an `eval_function` that computes the COCO/VOC mAP on a
config dataset with ptqdet's metric code. Every calibration the reference runs (one
`PostTrainingQuantization.quantize()` per trial model) and every call of the eval function
is counted.

paddleslim 2.6.0's Analysis, run with an eval_function and no quant_model_dir, does:
    metric_error_analyse(): 1 calibration + 2 evaluations (FP32, all layers INT8), then per
        layer 1 calibration + 1 evaluation ("quantize only this layer")
    get_target_quant_model(t): per prefix length k = 1, 2, ... of its ranking, 1 calibration
        + 1 evaluation, until the metric reaches t; saves save_dir/target_quant_model.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PTQDetConfig, PTQSettings
from ..data import BatchSource, build_source, calibration_loader
from ..files import resolve_model_files
from ..metrics import FunctionRunner, evaluate
from ..paddle_static import static_mode
from ..quantize import skip_weights
from .target import TARGET_DIR


@dataclass
class ReferenceCounters:
    """What the reference analysis spent."""

    calibrations: int = 0  # PostTrainingQuantization.quantize() calls
    evaluations: int = 0  # eval_function calls
    analysed_layers: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ReferenceResult:
    fp32_map: float  # on the eval_function's dataset, as the reference measured it
    int8_map: float
    layer_metrics: dict[str, float]  # paddleslim's sensitivity: FP32 mAP - mAP with only this layer quantized
    ranking: list[str]
    target: float  # the target handed to get_target_quant_model (eval_function's dataset)
    found: bool  # get_target_quant_model saved a model
    skip: list[str]  # the skip list of its last trial model (the saved one when found)
    model_dir: Path
    counters: ReferenceCounters
    max_layers: int | None = None


def ptq_quant_config(settings: PTQSettings, skip_tensor_list: list[str]) -> dict[str, Any]:
    """The PostTrainingQuantization keyword arguments of a `PTQ:` section (what quant_post_static passes).

    onnx_format is forced to False: paddleslim 2.6.0's Analysis with onnx_format=True calls an
    undefined name (`post_training_quantization`) in get_quant_sensitive_metric. ptqdet's own
    recovery keys (config.RECOVERY_KEYS) are left out: PostTrainingQuantization refuses them.
    """
    config = {**settings.paddleslim_dict(), "onnx_format": False}
    if skip_tensor_list:
        config["skip_tensor_list"] = list(skip_tensor_list)
    return config


class ProgramEvaluator:
    """paddleslim's eval_function(executor, program, feed_list, fetch_list) -> mAP, on a
    pre-loaded config dataset, with ptqdet's pre-processing, NMS handling and metric."""

    def __init__(self, cfg: PTQDetConfig, source: BatchSource):
        self.cfg = cfg
        self.source = source
        self.batches = list(source.batches())  # decoded once, reused by every trial

    def __call__(self, executor, program, feed_list, fetch_list) -> float:
        names = [getattr(n, "name", n) for n in feed_list]

        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            outputs = executor.run(program, feed={n: feed[n] for n in names}, fetch_list=fetch_list,
                                   return_numpy=False)
            return [np.array(o) for o in outputs]

        return evaluate(FunctionRunner(run), self.cfg, source=self.source, batches=self.batches, progress=False).map


def counted_eval(eval_function: Callable[..., float], counters: ReferenceCounters,
                 on_call: Callable[[], None] | None = None) -> Callable[..., float]:
    """eval_function that counts its calls in counters.evaluations."""

    def wrapper(*args, **kwargs):
        value = eval_function(*args, **kwargs)
        counters.evaluations += 1
        if on_call is not None:
            on_call()
        return value

    return wrapper


def instrument(analyzer: Any, counters: ReferenceCounters, max_layers: int | None = None,
               on_layers: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Count the calibrations of a paddleslim Analysis instance (every trial model is made by
    `self.create_ptq(...).quantize()`) and optionally analyse only its first `max_layers`
    layers (debugging). Patches the instance only. Returns a dict whose "last_skip" is the
    skip list of the latest trial model."""
    state: dict[str, Any] = {"last_skip": []}
    create_ptq = analyzer.create_ptq
    prepare = analyzer.prepare_error_analyse

    def counting_create_ptq(executor, *args, **kwargs):
        ptq = create_ptq(executor, *args, **kwargs)
        skip = args[0] if args else kwargs.get("skip_tensor_list", [])
        state["last_skip"] = list(skip or [])
        quantize = ptq.quantize

        def counting_quantize(*q_args, **q_kwargs):
            program = quantize(*q_args, **q_kwargs)
            counters.calibrations += 1
            return program

        ptq.quantize = counting_quantize
        return ptq

    def limited_prepare(*args, **kwargs):
        result = prepare(*args, **kwargs)
        layers = getattr(analyzer, "tobe_analyized_layer", None)  # (sic) paddleslim's name
        if layers is not None:
            if max_layers is not None:
                analyzer.tobe_analyized_layer = layers = list(layers)[:max_layers]
            counters.analysed_layers = len(layers)
            if on_layers is not None:
                on_layers(len(layers))
        return result

    analyzer.create_ptq = counting_create_ptq
    analyzer.prepare_error_analyse = limited_prepare
    return state


class PhaseBar:
    """One progress bar per phase of the reference analysis, counting eval_function calls
    (nothing when progress is off)."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.bar: Any = None

    def start(self, desc: str, total: int | None = None) -> None:
        self.close()
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(desc=desc, total=total, unit="eval")

    def on_eval(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_layers(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = n + 2  # FP32 + all-INT8 + one per layer
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_analyzer(cfg: PTQDetConfig, fp32_model_dir: Path, save_dir: Path, eval_key: str,
                  counters: ReferenceCounters, bar: PhaseBar, progress: bool) -> Any:
    """paddleslim's Analysis on cfg's calibration images, PTQ settings and skip list, its
    eval_function the counted mAP on `eval_key`; save_dir made, an old target model removed."""
    from paddleslim.quant import analysis as ps_analysis

    settings = cfg.ptq
    fp32_files = resolve_model_files(fp32_model_dir, cfg.model_filename, cfg.params_filename)
    loader = calibration_loader(cfg, settings.batch_size, settings.batch_nums, progress=progress)
    evaluator = ProgramEvaluator(cfg, build_source(cfg, eval_key))
    save_dir.mkdir(parents=True, exist_ok=True)  # Analysis makes only the last level
    shutil.rmtree(save_dir / TARGET_DIR, ignore_errors=True)  # "found" must mean this run
    return ps_analysis.Analysis(
        float_model_dir=str(fp32_model_dir), model_filename=cfg.model_filename, params_filename=cfg.params_filename,
        data_loader=loader, eval_function=counted_eval(evaluator, counters, bar.on_eval),
        resume=False, save_dir=str(save_dir),
        quant_config=ptq_quant_config(settings, skip_weights(cfg, fp32_files, cfg.skip_tensor_list)))


def run_reference_analysis(cfg: PTQDetConfig, fp32_model_dir: Path, save_dir: Path, target_drop: float,
                           eval_key: str = "FastEvalDataset", max_layers: int | None = None,
                           progress: bool = True, verbose: bool = False) -> ReferenceResult:
    """paddleslim's Analysis.metric_error_analyse() then get_target_quant_model(): its eval
    function is the mAP on `eval_key`, its target is that FP32 mAP minus `target_drop`
    (the same allowed drop as ours; an absolute target on a subset would mean another thing)."""
    import paddle
    from paddleslim.quant import analysis as ps_analysis

    if not verbose:  # paddleslim logs every trial at INFO with its own handler
        logging.getLogger(ps_analysis.__name__).setLevel(logging.WARNING)
    paddle.set_flags({"FLAGS_use_mkldnn": False})  # plain CPU kernels, as ptqdet's trial models
    counters = ReferenceCounters()
    start = time.perf_counter()
    save_dir = Path(save_dir)
    bar = PhaseBar(progress)
    with static_mode():
        analyzer = make_analyzer(cfg, fp32_model_dir, save_dir, eval_key, counters, bar, progress)
        state = instrument(analyzer, counters, max_layers, bar.on_layers)
        counters.seconds["setup"] = time.perf_counter() - start
        t = time.perf_counter()
        bar.start("paddleslim metric_error_analyse (calibrate + eval per layer)")
        analyzer.metric_error_analyse()
        counters.seconds["metric_error_analyse"] = time.perf_counter() - t
        target = float(analyzer.fp_metric) - float(target_drop)
        t = time.perf_counter()
        bar.start("paddleslim get_target_quant_model (calibrate + eval per prefix)", len(analyzer.layer_metrics))
        analyzer.get_target_quant_model(target)
        counters.seconds["get_target_quant_model"] = time.perf_counter() - t
        bar.close()
    counters.seconds["total"] = time.perf_counter() - start
    model_dir = save_dir / TARGET_DIR
    ranking = sorted(analyzer.layer_metrics, key=analyzer.layer_metrics.get, reverse=True)
    return ReferenceResult(fp32_map=float(analyzer.fp_metric), int8_map=float(analyzer.quant_metric),
                           layer_metrics=dict(analyzer.layer_metrics), ranking=ranking, target=target,
                           found=(model_dir / "model.pdmodel").is_file(), skip=state["last_skip"],
                           model_dir=model_dir, counters=counters, max_layers=max_layers)
