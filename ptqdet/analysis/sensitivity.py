"""Per-layer sensitivity from one calibration: metric (mAP) and proxy (output SQNR) rankings."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..config import PTQDetConfig
from ..data import BatchSource
from ..metrics import FunctionRunner, detect, evaluate, map_of_detections
from .context import AnalysisContext
from .graph import QuantGraph


class Evaluator:
    """mAP of trial programs of a QuantGraph on a pre-loaded dataset."""

    def __init__(self, cfg: PTQDetConfig, graph: QuantGraph, source: BatchSource):
        self.cfg = cfg
        self.graph = graph
        self.source = source
        self.batches = list(source.batches())  # decoded once, reused by every trial

    def evaluate_with_float(self, layers: list[str] | set[str]) -> float:
        """mAP of the calibrated model with `layers` (weight names) put back to float: none is
        the all-INT8 model, all of graph.layers the FP32 model."""
        runner = FunctionRunner(self.graph.runner(layers).run)
        return evaluate(runner, self.cfg, source=self.source, batches=self.batches, progress=False).map

    def detections_with_float(self, layers: list[str] | set[str], start: int, stop: int
                              ) -> list[dict[str, np.ndarray]]:
        """The detections of batches[start:stop] with `layers` in float: one part of an
        evaluation split over workers (map_of_detections scores the parts together)."""
        runner = FunctionRunner(self.graph.runner(layers).run)
        return [detect(runner, self.cfg, batch) for batch in self.batches[start:stop]]

    def map_of_detections(self, detections: list[dict[str, np.ndarray]]) -> float:
        """mAP of the detections of every batch, in order (as evaluate_with_float scores them)."""
        return map_of_detections(self.cfg, self.source, self.batches, detections)


def sqnr_db(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of the outputs, in dB (higher is better)."""
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - t.astype(np.float64)))) for r, t in zip(reference, test))
    if noise == 0:
        return 100.0
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def section_name(kind: str, mode: str, batches: int | None = None) -> str:
    """The cache section of a ranking: its kind (metric, proxy) and mode, and the proxy's batches
    (a ranking depends on those; every run with the same calibration shares the cache)."""
    return f"{kind}_{mode}" if batches is None else f"{kind}_{mode}_{batches}batches"


def proxy_ranking(graph: QuantGraph, feeds: list[dict[str, np.ndarray]], layers: list[str], mode: str,
                  ctx: AnalysisContext) -> dict[str, float]:
    """Per layer, the SQNR loss (dB) of the detection head outputs (before NMS) vs FP32.

    mode "revert": from the full INT8 model, put one layer back to float: the gain is the
    layer's damage. mode "quantize": quantize that one layer only: the drop is its damage.
    """
    fetch = graph.pre_nms  # None: the model outputs are already pre-NMS (PP-YOLOE)
    all_layers = list(graph.layers)
    fp32 = graph.runner(all_layers, fetch)
    reference = [fp32.run(f) for f in feeds]
    int8 = graph.runner([], fetch)
    base = float(np.mean([sqnr_db(r, int8.run(f)) for r, f in zip(reference, feeds)]))

    def damage(name: str) -> float:
        runner = graph.runner([name] if mode == "revert" else [n for n in all_layers if n != name], fetch)
        value = float(np.mean([sqnr_db(r, runner.run(f)) for r, f in zip(reference, feeds)]))
        # damage in dB: how much SQNR this layer costs
        return value - base if mode == "revert" else 100.0 - min(value, 100.0)

    section = ctx.section(section_name("proxy", mode, len(feeds)))
    return score_layers(layers, damage, section, ctx.save, ctx.progress, f"proxy ({mode} one)")


def score_layers(layers: list[str], damage: Callable[[str], float], cache: dict[str, Any],
                 on_done: Callable[[], None], progress: bool, desc: str) -> dict[str, float]:
    """damage(layer) for every layer, with a progress bar; cached layers are not scored
    again, and on_done() (which saves the cache) runs after each new score."""
    iterator = layers
    if progress:
        from tqdm import tqdm
        iterator = tqdm(layers, desc=desc, unit="layer")
    scores = {}
    for name in iterator:
        if name not in cache:
            cache[name] = damage(name)
            on_done()
        scores[name] = cache[name]
    return scores


def metric_ranking(evaluator: Evaluator, layers: list[str], mode: str, reference_map: float,
                   ctx: AnalysisContext) -> dict[str, float]:
    """Per layer, the mAP damage: revert → mAP(INT8 with layer in float) − mAP(INT8);
    quantize → mAP(FP32) − mAP(only this layer quantized)."""
    all_layers = list(evaluator.graph.layers)

    def damage(name: str) -> float:
        start = time.perf_counter()
        if mode == "revert":
            value = evaluator.evaluate_with_float([name]) - reference_map
        else:
            value = reference_map - evaluator.evaluate_with_float([n for n in all_layers if n != name])
        ctx.counters.fast_evaluations += 1
        ctx.counters.seconds["last_layer_s"] = time.perf_counter() - start
        return value

    section = ctx.section(section_name("metric", mode))
    return score_layers(layers, damage, section, ctx.save, ctx.progress, f"mAP ({mode} one)")


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    """Spearman rank correlation of two score dicts over their common keys."""
    keys = sorted(set(a) & set(b))
    if len(keys) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr([a[k] for k in keys], [b[k] for k in keys]).correlation)
