"""analysis.py's pipeline: calibrate once, rank layers (mAP and proxy), search the target model."""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import ConfigError, PTQDetConfig, PTQSettings
from ..data import build_source, check_dataset, feed_from_batch
from ..metrics import evaluate
from ..model import (ModelFiles, Predictor, PredictorOptions, check_config_model, check_output_dir, default_threads,
                     resolve_model_files)
from ..quantize import SAVED_FILES, quantize_files
from ..report import atomic_write_text, machine_info, markdown_table, mAP_points, write_json
from . import plots
from .graph import QuantGraph
from .sensitivity import (Counters, Evaluator, ResultCache, cache_key, metric_ranking, proxy_ranking,
                          spearman)

RANK_MODES = ("quantize", "revert")


def search_mode(modes) -> str:
    """The ranking the target search follows: "quantize one" when it was computed. Measured on
    the demo PicoDet-s (target 1 point under FP32): its prefix needed 6 layers in float, the
    "revert one" ranking 74 (reverting one layer of a broken INT8 model moves the 40-image
    FastEval mAP by noise beyond the two worst layers)."""
    modes = list(modes)
    return "quantize" if "quantize" in modes else modes[0]


@dataclass
class AnalysisOptions:
    save_dir: Path
    device: str = "cpu"
    threads: int | None = None
    rank_modes: tuple[str, ...] = RANK_MODES
    proxy_batches: int = 2
    max_drop: float | None = None  # alternative to target_metric: FP32 mAP - max_drop
    progress: bool = True


@dataclass
class AnalysisResult:
    fp32_map: float
    int8_map: float
    ranking: list[str]
    metric_scores: dict[str, dict[str, float]]
    proxy_scores: dict[str, dict[str, float]]
    spearman: dict[str, float]
    counters: Counters
    target: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    op_types: dict[str, str] = field(default_factory=dict)  # layer (weight name) -> conv2d, matmul_v2, ...


def _progress(iterable, progress: bool, **kw):
    if not progress:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, **kw)


def check_inputs(cfg: PTQDetConfig, opts: AnalysisOptions) -> ModelFiles:
    files = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    check_output_dir(opts.save_dir, files.model_dir, replaced=False)  # analysis adds files, keeps its cache
    check_config_model(cfg, files)
    check_dataset(cfg, "TrainDataset", need_annotations=False)
    check_dataset(cfg, "EvalDataset")
    if cfg.has_dataset("FastEvalDataset"):
        check_dataset(cfg, "FastEvalDataset")
    if cfg.get_target_quant_model and cfg.target_metric is None and opts.max_drop is None:
        raise ConfigError(f"{cfg.path}: get_target_quant_model needs target_metric (or --max_drop)")
    bad = [m for m in opts.rank_modes if m not in RANK_MODES]
    if bad or not opts.rank_modes:
        raise ConfigError(f"rank modes {bad or '(none)'}: choose from {RANK_MODES}")
    return files


def analyze(cfg: PTQDetConfig, opts: AnalysisOptions) -> AnalysisResult:
    fp32_files = check_inputs(cfg, opts)
    counters = Counters()
    t0 = time.perf_counter()
    key = cache_key(cfg, {"rank_modes": opts.rank_modes, "proxy_batches": opts.proxy_batches, "v": 2})
    work = opts.save_dir / ".work" / key
    cache = ResultCache(work / "results.json")
    on_done = cache.save

    # 1. the FP32 model (Paddle Inference): the target is checked before any calibration
    refs = cache.get("reference")
    fast_key = "FastEvalDataset" if cfg.has_dataset("FastEvalDataset") else "EvalDataset"
    if "fp32_full" not in refs:
        predictor = Predictor(fp32_files, PredictorOptions(device=opts.device, threads=opts.threads or default_threads()))
        refs["fp32_full"] = evaluate(predictor, cfg, "EvalDataset", progress=opts.progress, desc="eval FP32").map
        counters.full_evaluations += 1
        on_done()
    target = _target(cfg, opts, refs["fp32_full"])

    # 2. one calibration, all quantizable layers but cfg.skip_tensor_list
    # recovery (PTQ.equalize_depthwise) first: layers are ranked for what recovery could not fix,
    # and a reverted layer reads the recovered FP32 model's weights (same function as the original)
    calibrated = ModelFiles(work / "calibrated", *SAVED_FILES)
    recovered = ModelFiles(work / "recovered_fp32", *SAVED_FILES) if cfg.ptq.equalize_depthwise else fp32_files
    settings = PTQSettings(**{**cfg.ptq.to_dict(), "onnx_format": False})
    if not calibrated.model_path.is_file() or not recovered.model_path.is_file():
        start = time.perf_counter()
        quantize_files(cfg, fp32_files, calibrated.model_dir, settings, cfg.skip_tensor_list, opts.device,
                       opts.progress, recovered_dir=recovered.model_dir if recovered != fp32_files else None)
        counters.calibrations += 1
        counters.seconds["calibration"] = time.perf_counter() - start
    graph = QuantGraph(calibrated, recovered)
    layers = list(graph.layers)
    full_eval = Evaluator(cfg, graph, build_source(cfg, "EvalDataset"))
    fast_eval = full_eval if fast_key == "EvalDataset" else Evaluator(cfg, graph, build_source(cfg, fast_key))
    if "int8_full" not in refs:
        refs["int8_full"] = full_eval([])
        counters.full_evaluations += 1
        refs["fp32_fast"] = fast_eval(layers)
        refs["int8_fast"] = fast_eval([])
        counters.fast_evaluations += 2
        on_done()

    # 3. rankings
    metric_scores: dict[str, dict[str, float]] = {}
    proxy_scores: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    feeds = [feed_from_batch(b, cfg.feed_names) for b in
             build_source(cfg, "TrainDataset", images_only=True).batches(
                 max_images=max(opts.proxy_batches, 1) * int(cfg.ppdet["EvalReader"]["batch_size"]))]
    for mode in opts.rank_modes if opts.proxy_batches > 0 else ():  # proxy_batches 0: no proxy ranking
        proxy_scores[mode] = proxy_ranking(cfg, graph, feeds, layers, mode, cache.get(f"proxy_{mode}"), on_done,
                                           opts.progress)
        counters.proxy_runs += len(layers)
    counters.seconds["proxy_ranking"] = time.perf_counter() - start
    start = time.perf_counter()
    for mode in opts.rank_modes:
        reference = refs["int8_fast"] if mode == "revert" else refs["fp32_fast"]
        metric_scores[mode] = metric_ranking(fast_eval, layers, mode, reference, cache.get(f"metric_{mode}"),
                                             on_done, counters, opts.progress)
    counters.seconds["metric_ranking"] = time.perf_counter() - start
    main_mode = search_mode(metric_scores)
    # ties (e.g. all zero on a small set) are broken by the proxy
    tie_break = proxy_scores.get(main_mode, {})
    ranking = sorted(layers, key=lambda n: (metric_scores[main_mode][n], tie_break.get(n, 0.0)), reverse=True)
    rho = {m: spearman(metric_scores[m], proxy_scores[m]) for m in proxy_scores}

    result = AnalysisResult(fp32_map=refs["fp32_full"], int8_map=refs["int8_full"], ranking=ranking,
                            metric_scores=metric_scores, proxy_scores=proxy_scores, spearman=rho, counters=counters,
                            op_types={n: graph.layers[n].op_type for n in layers})
    # 4. target search
    if target is not None:
        start = time.perf_counter()
        result.target = search_target(cfg, opts, graph, full_eval, fp32_files, ranking, target, counters,
                                      cache.get("search"), on_done)
        counters.seconds["target_search"] = time.perf_counter() - start
    # 5. outputs
    start = time.perf_counter()
    if cfg.plot_hist:
        result.files.update(_distribution_plots(cfg, graph, feeds, ranking, result, opts.save_dir))
    counters.seconds["plots"] = time.perf_counter() - start
    counters.seconds["total"] = time.perf_counter() - t0
    result.files.update(write_outputs(cfg, opts, result))
    return result


def _target(cfg: PTQDetConfig, opts: AnalysisOptions, fp32_map: float) -> float | None:
    if not cfg.get_target_quant_model and opts.max_drop is None:
        return None
    # --max_drop (command line) wins over the config's target_metric
    target = fp32_map - float(opts.max_drop) if opts.max_drop is not None else float(cfg.target_metric)
    if target > fp32_map:
        raise ConfigError(f"target_metric {target:.4f} is above the FP32 model's mAP {fp32_map:.4f} on EvalDataset: "
                          "no quantized model can reach it; lower target_metric")
    return target


def search_target(cfg: PTQDetConfig, opts: AnalysisOptions, graph: QuantGraph, full_eval: Evaluator,
                  fp32_files: ModelFiles, ranking: list[str], target: float, counters: Counters,
                  cache: dict[str, Any], on_done) -> dict[str, Any]:
    """Shortest prefix of the ranking to keep in float that meets `target`: binary search on
    EvalDataset (trial models from the one calibration), then the real model (PTQ with that
    skip list, as post_quant.py would make it) verified on EvalDataset."""
    tried: dict[str, float] = cache.setdefault("tried", {})

    def map_at(k: int) -> float:
        if str(k) not in tried:
            tried[str(k)] = full_eval(ranking[:k])
            counters.full_evaluations += 1
            on_done()
        return tried[str(k)]

    # invariant: map_at(hi) >= target (hi = N is the FP32 model), map_at(lo) < target (lo = -1: none)
    lo, hi = -1, len(ranking)
    bar = _progress(None, opts.progress, total=math.ceil(math.log2(len(ranking) + 1)), desc="target search",
                    unit="eval") if opts.progress else None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if map_at(mid) >= target:
            hi = mid
        else:
            lo = mid
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    k = hi
    # verify with the real pipeline (PTQ with that skip list, as post_quant.py makes it), run
    # as the search simulated it (fake-quant graph on FP32 kernels); step forward on a miss
    out_dir = opts.save_dir / "target_quant_model"
    threads = opts.threads or default_threads()
    verified = None
    verifications = 0
    for _ in range(3):
        skip = list(cfg.skip_tensor_list) + ranking[:k]
        quantize_files(cfg, fp32_files, out_dir, cfg.ptq, skip, opts.device, opts.progress)
        counters.calibrations += 1
        predictor = Predictor(ModelFiles(out_dir, *SAVED_FILES),
                              PredictorOptions(device=opts.device, threads=threads, mkldnn=False))
        verified = evaluate(predictor, cfg, "EvalDataset", progress=opts.progress, desc="verify target model").map
        counters.full_evaluations += 1
        verifications += 1
        if verified >= target or k >= len(ranking):
            break
        k = min(len(ranking), k + max(1, len(ranking) // 50))
    # and on the runtime that deploys it (oneDNN INT8 on CPU when Paddle can fuse it)
    deployed = Predictor(ModelFiles(out_dir, *SAVED_FILES), PredictorOptions(device=opts.device, threads=threads))
    deployed_map = evaluate(deployed, cfg, "EvalDataset", progress=opts.progress, desc="eval on runtime").map
    counters.full_evaluations += 1
    return {"target": target, "skip": ranking[:k], "num_skipped": k, "simulated_map": tried.get(str(k)),
            "verified_map": verified, "met": verified is not None and verified >= target,
            "deployed_map": deployed_map, "deployed_runtime": deployed.mode, "verifications": verifications,
            "search_evaluations": len(tried) + verifications,
            "model_dir": str(out_dir), "tried": {int(a): b for a, b in tried.items()}}


def _act_inputs(graph: QuantGraph) -> dict[str, str]:
    """weight name -> the float activation its layer reads (first use)."""
    out: dict[str, str] = {}
    from ..model import WEIGHT_SLOTS
    for op in graph.program.global_block().ops:
        if op.type in WEIGHT_SLOTS:
            act_slot, w_slot = WEIGHT_SLOTS[op.type]
            w = op.input(w_slot)[0]
            if w in graph.layers and w not in out:
                a = op.input(act_slot)[0]
                out[w] = graph.float_of.get(a, a)
    return out


def _distribution_plots(cfg: PTQDetConfig, graph: QuantGraph, feeds, ranking: list[str], result: AnalysisResult,
                        save_dir: Path) -> dict[str, str]:
    acts = _act_inputs(graph)
    names = [w for w in graph.layers if w in acts]
    fp32_program = graph.variant(list(graph.layers))
    fetch = [acts[w] for w in names]
    values: dict[str, list[np.ndarray]] = {w: [] for w in names}
    for feed in feeds[:2]:
        for w, v in zip(names, graph.run(fp32_program, feed, fetch)):
            values[w].append(v.ravel())
    rng = np.random.default_rng(0)
    act_samples, weight_samples, stats = {}, {}, {}
    for w in names:
        a = np.concatenate(values[w])
        act_samples[w] = a if a.size <= 20000 else rng.choice(a, 20000, replace=False)
        weight_samples[w] = graph.fp32_weights[w].ravel()
        stats[w] = {"activation": plots.outlier_stats(a), "weight": plots.outlier_stats(graph.fp32_weights[w])}
    highlight = set(result.target["skip"]) if result.target else set(ranking[:5])
    out = {}
    for kind, samples in (("activation", act_samples), ("weight", weight_samples)):
        paths = plots.distribution_boxplot(samples, save_dir / f"{kind}_distribution",
                                           f"{kind} distribution per quantized layer (FP32 model)", highlight)
        out[f"{kind}_distribution"] = str(paths[0])
    write_json(save_dir / "distribution_stats.json", stats)
    out["distribution_stats"] = str(save_dir / "distribution_stats.json")
    return out


def write_analyzed_config(cfg: PTQDetConfig, skip: list[str], out: Path) -> Path:
    """The input config with `skip_tensor_list` set; _BASE_ paths rewritten relative to `out`."""
    text = cfg.path.read_text()
    lines, skipping = [], False
    for line in text.splitlines():
        if line.startswith("skip_tensor_list:"):
            skipping = True
            continue
        if skipping and (line.startswith((" ", "-", "\t")) or not line.strip()):
            continue
        skipping = False
        lines.append(line)
    body = "\n".join(lines)
    raw_base = yaml.safe_load(io.StringIO("\n".join(l for l in text.splitlines() if l.startswith("_BASE_"))) or "") or {}
    if raw_base.get("_BASE_"):
        rel = [os.path.relpath((cfg.path.parent / b).resolve(), out.parent.resolve()) for b in raw_base["_BASE_"]]
        body = "\n".join(("_BASE_: " + repr(rel)) if l.startswith("_BASE_") else l for l in body.splitlines())
    header = (f"# Written by analysis.py from {cfg.path}: the layers below stay in float.\n"
              f"# Quantize with: python post_quant.py --config_path {out} --save_dir <dir>\n")
    skip_yaml = "skip_tensor_list:\n" + "".join(f"  - {s}\n" for s in skip) if skip else "skip_tensor_list: []\n"
    return atomic_write_text(out, header + body.rstrip() + "\n\n" + skip_yaml)


def write_outputs(cfg: PTQDetConfig, opts: AnalysisOptions, r: AnalysisResult) -> dict[str, str]:
    d = opts.save_dir
    files: dict[str, str] = {}
    modes = list(r.metric_scores)
    rows = []
    for i, name in enumerate(r.ranking, 1):
        row = {"rank": i, "layer": name, "op_type": r.op_types.get(name, ""), **{f"map_{m}": round(r.metric_scores[m][name], 5) for m in modes},
               **{f"proxy_sqnr_loss_db_{m}": round(r.proxy_scores[m][name], 3) for m in r.proxy_scores}}
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["rank", "layer"])
    writer.writeheader()
    writer.writerows(rows)
    files["ranking_csv"] = str(atomic_write_text(d / "ranking.csv", buf.getvalue()))
    data = {"config": str(cfg.path), "model_dir": str(cfg.model_dir), "ptq": cfg.ptq.to_dict(),
            "fp32_map": r.fp32_map, "int8_map": r.int8_map, "ranking": rows, "spearman_proxy_vs_metric": r.spearman,
            "counters": {"calibrations": r.counters.calibrations, "full_evaluations": r.counters.full_evaluations,
                         "fast_evaluations": r.counters.fast_evaluations, "proxy_runs": r.counters.proxy_runs,
                         "seconds": {k: round(v, 1) for k, v in r.counters.seconds.items()}},
            "target": r.target, "machine": machine_info()}
    files["ranking_json"] = str(write_json(d / "ranking.json", data))
    main_mode = search_mode(modes)
    chart = plots.sensitivity_chart(r.metric_scores[main_mode], d / "sensitivity",
                                    f"mAP damage per layer ({main_mode} one; top 30)",
                                    "mAP points" + (" gained when put back to float" if main_mode == "revert" else " lost"),
                                    proxy=r.proxy_scores.get(main_mode))
    files["sensitivity_chart"] = str(chart[0])
    skip = r.target["skip"] if r.target else r.ranking[:5]
    skip_all = list(dict.fromkeys(list(cfg.skip_tensor_list) + skip))
    name = cfg.path.stem.replace("_analysis", "")
    files["analyzed_config"] = str(write_analyzed_config(cfg, skip_all, d / f"{name}_analyzed_ptq.yaml"))
    files["report"] = str(atomic_write_text(d / "analysis.md", _markdown(cfg, r, files)))
    return files


def _markdown(cfg: PTQDetConfig, r: AnalysisResult, files: dict[str, str]) -> str:
    c = r.counters
    lines = [f"# Quantization analysis of `{cfg.model_dir}`", "",
             f"Config `{cfg.path}`; PTQ: algo {cfg.ptq.algo}, weights {cfg.ptq.weight_quantize_type}, "
             f"activations {cfg.ptq.activation_quantize_type}, {cfg.ptq.batch_size}x{cfg.ptq.batch_nums} calibration images.", "",
             markdown_table(["model", "mAP (EvalDataset)"], [["FP32", mAP_points(r.fp32_map)],
                                                            ["INT8, all layers", mAP_points(r.int8_map)]] +
                            ([[f"INT8, {r.target['num_skipped']} layers in float (verified)",
                               mAP_points(r.target["verified_map"])]] if r.target else [])), "",
             "## Cost", "",
             markdown_table(["calibrations", "full evaluations", "fast evaluations", "proxy runs", "total time"],
                            [[c.calibrations, c.full_evaluations, c.fast_evaluations, c.proxy_runs,
                              f"{c.seconds.get('total', 0):.0f} s"]]), "",
             "Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in c.seconds.items() if k != "last_layer_s"), "",
             "## Most sensitive layers", "",
             f"![sensitivity]({Path(files['sensitivity_chart']).name})", ""]
    modes = list(r.metric_scores)
    top = r.ranking[:15]
    lines.append(markdown_table(["rank", "layer", *[f"mAP pts ({m} one)" for m in modes],
                                 *[f"SQNR loss dB ({m})" for m in r.proxy_scores]],
                                [[i + 1, n, *[round(100 * r.metric_scores[m][n], 2) for m in modes],
                                  *[round(r.proxy_scores[m][n], 2) for m in r.proxy_scores]] for i, n in enumerate(top)]))
    lines += ["", "Spearman rank correlation, proxy vs mAP: " +
              (", ".join(f"{m}: {v:.2f}" for m, v in r.spearman.items()) or "no proxy ranking"), ""]
    if r.target:
        t = r.target
        lines += ["## Target model", "",
                  f"Target mAP {mAP_points(t['target'])}: {t['num_skipped']} layers kept in float, verified mAP "
                  f"{mAP_points(t['verified_map'])} ({'met' if t['met'] else 'NOT met'}; fake-quant graph on FP32 kernels, "
                  f"as searched); on {t['deployed_runtime']}: {mAP_points(t['deployed_map'])}. Model: `{t['model_dir']}`.",
                  "", f"Full evaluations for the target: {t['search_evaluations']} ({len(t['tried'])} in the binary "
                  f"search, {t['verifications']} verifying the real model; goal: at most "
                  f"ceil(log2 N) + 3 = {math.ceil(math.log2(len(r.ranking))) + 3}).",
                  "", "Binary search (layers in float → simulated mAP): " +
                  ", ".join(f"{k} → {mAP_points(v)}" for k, v in sorted(t["tried"].items())), ""]
    if "activation_distribution" in files:
        lines += ["## Distributions", "", f"![activations]({Path(files['activation_distribution']).name})", "",
                  f"![weights]({Path(files['weight_distribution']).name})", "",
                  "Outlier statistics per layer (max |x| / 99.99th percentile): `distribution_stats.json`.", ""]
    lines += [f"Analyzed config: `{files['analyzed_config']}`", ""]
    return "\n".join(lines)
