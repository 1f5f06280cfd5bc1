"""Activation and weight distributions of the quantized layers (FP32 model): box plots and outlier statistics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..paddle_static import WEIGHT_SLOTS
from ..report import write_json
from . import plots
from .graph import QuantGraph

MAX_SAMPLES = 20000  # activation values kept per layer for its box
SAMPLE_BATCHES = 2


def act_inputs(graph: QuantGraph) -> dict[str, str]:
    """weight name -> the float activation its layer reads (first use)."""
    out: dict[str, str] = {}
    for op in graph.program.global_block().ops:
        if op.type in WEIGHT_SLOTS:
            act_slot, w_slot = WEIGHT_SLOTS[op.type]
            w = op.input(w_slot)[0]
            if w in graph.layers and w not in out:
                a = op.input(act_slot)[0]
                out[w] = graph.float_of.get(a, a)
    return out


def activation_values(graph: QuantGraph, feeds: list[dict[str, np.ndarray]], acts: dict[str, str]
                      ) -> dict[str, np.ndarray]:
    """Per layer (program order), every value of its float input on the first SAMPLE_BATCHES
    feeds, FP32 model."""
    names = [w for w in graph.layers if w in acts]
    fp32_program = graph.variant(list(graph.layers))
    values: dict[str, list[np.ndarray]] = {w: [] for w in names}
    for feed in feeds[:SAMPLE_BATCHES]:
        for w, v in zip(names, graph.run(fp32_program, feed, [acts[w] for w in names])):
            values[w].append(v.ravel())
    return {w: np.concatenate(values[w]) for w in names}


def subsample(values: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """At most MAX_SAMPLES values per layer (one fixed random choice, layer by layer)."""
    rng = np.random.default_rng(seed)
    return {w: a if a.size <= MAX_SAMPLES else rng.choice(a, MAX_SAMPLES, replace=False) for w, a in values.items()}


def distribution_plots(graph: QuantGraph, feeds: list[dict[str, np.ndarray]], highlight: set[str],
                       save_dir: Path) -> dict[str, str]:
    """activation_/weight_distribution.png/.pdf (the `highlight` layers in red) and
    distribution_stats.json (outlier statistics of all the values) in save_dir; returns their
    paths by name."""
    acts = activation_values(graph, feeds, act_inputs(graph))
    stats = {w: {"activation": plots.outlier_stats(a), "weight": plots.outlier_stats(graph.fp32_weights[w])}
             for w, a in acts.items()}
    weight_samples = {w: graph.fp32_weights[w].ravel() for w in acts}
    out = {}
    for kind, samples in (("activation", subsample(acts)), ("weight", weight_samples)):
        paths = plots.distribution_boxplot(samples, save_dir / f"{kind}_distribution",
                                           f"{kind} distribution per quantized layer (FP32 model)", highlight)
        out[f"{kind}_distribution"] = str(paths[0])
    write_json(save_dir / "distribution_stats.json", stats)
    out["distribution_stats"] = str(save_dir / "distribution_stats.json")
    return out
