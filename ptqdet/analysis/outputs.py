"""The analysis' files: ranking.csv/json, the sensitivity chart, analysis.md and the analyzed config."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import PTQDetConfig
from ..report import atomic_write_text, machine_info, mAP_points, markdown_table, write_json
from . import plots
from .results import AnalysisResult
from .search import search_mode


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
    raw_base = yaml.safe_load(io.StringIO("\n".join(line for line in text.splitlines()
                                                    if line.startswith("_BASE_"))) or "") or {}
    if raw_base.get("_BASE_"):
        rel = [os.path.relpath((cfg.path.parent / b).resolve(), out.parent.resolve()) for b in raw_base["_BASE_"]]
        body = "\n".join(("_BASE_: " + repr(rel)) if line.startswith("_BASE_") else line
                         for line in body.splitlines())
    header = (f"# Written by analysis.py from {cfg.path}: the layers below stay in float.\n"
              f"# Quantize with: python post_quant.py --config_path {out} --save_dir <dir>\n")
    skip_yaml = "skip_tensor_list:\n" + "".join(f"  - {s}\n" for s in skip) if skip else "skip_tensor_list: []\n"
    return atomic_write_text(out, header + body.rstrip() + "\n\n" + skip_yaml)


def ranking_rows(r: AnalysisResult) -> list[dict[str, Any]]:
    """One row per layer, most damaging first: rank, layer, op type, mAP damage per mode,
    proxy (SQNR loss, dB) per mode."""
    modes = list(r.metric_scores)
    return [{"rank": i, "layer": name, "op_type": r.op_types.get(name, ""),
             **{f"map_{m}": round(r.metric_scores[m][name], 5) for m in modes},
             **{f"proxy_sqnr_loss_db_{m}": round(r.proxy_scores[m][name], 3) for m in r.proxy_scores}}
            for i, name in enumerate(r.ranking, 1)]


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["rank", "layer"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def ranking_json(cfg: PTQDetConfig, r: AnalysisResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"config": str(cfg.path), "model_dir": str(cfg.model_dir), "ptq": cfg.ptq.to_dict(),
            "fp32_map": r.fp32_map, "int8_map": r.int8_map, "ranking": rows, "spearman_proxy_vs_metric": r.spearman,
            "counters": r.counters.to_dict(), "target": r.target.to_dict() if r.target else None,
            "deploy": {"backend": r.deploy.backend, "threads": r.deploy.threads, "split": r.deploy.split,
                       "fp32_maps": r.deploy.fp32_maps, "base": r.deploy.base, "base_trials": r.deploy.base_trials,
                       "layer_costs": r.deploy.layer_costs} if r.deploy else None,
            "machine": machine_info()}


def write_outputs(cfg: PTQDetConfig, save_dir: Path, r: AnalysisResult) -> dict[str, str]:
    """Every file of the analysis but the distribution plots, in save_dir; their paths by name."""
    d = save_dir
    files: dict[str, str] = {}
    rows = ranking_rows(r)
    files["ranking_csv"] = str(atomic_write_text(d / "ranking.csv", csv_text(rows)))
    files["ranking_json"] = str(write_json(d / "ranking.json", ranking_json(cfg, r, rows)))
    main_mode = search_mode(r.metric_scores)
    chart = plots.sensitivity_chart(r.metric_scores[main_mode], d / "sensitivity",
                                    f"mAP damage per layer ({main_mode} one; top 30)",
                                    "mAP points" + (" gained when put back to float" if main_mode == "revert"
                                                    else " lost"),
                                    proxy=r.proxy_scores.get(main_mode))
    files["sensitivity_chart"] = str(chart[0])
    skip = r.target.skip if r.target else r.ranking[:5]
    skip_all = list(dict.fromkeys(list(cfg.skip_tensor_list) + skip))
    name = cfg.path.stem.replace("_analysis", "")
    files["analyzed_config"] = str(write_analyzed_config(cfg, skip_all, d / f"{name}_analyzed_ptq.yaml"))
    files["report"] = str(atomic_write_text(d / "analysis.md", markdown(cfg, r, files)))
    return files


def markdown(cfg: PTQDetConfig, r: AnalysisResult, files: dict[str, str]) -> str:
    """analysis.md: the mAP table, the cost, the most sensitive layers, the target model."""
    c = r.counters
    lines = [f"# Quantization analysis of `{cfg.model_dir}`", "",
             f"Config `{cfg.path}`; PTQ: algo {cfg.ptq.algo}, weights {cfg.ptq.weight_quantize_type}, "
             f"activations {cfg.ptq.activation_quantize_type}, {cfg.ptq.batch_size}x{cfg.ptq.batch_nums} "
             f"calibration images.", "",
             markdown_table(["model", "images", "mAP"],
                            [["FP32", "EvalDataset", mAP_points(r.fp32_map)],
                             ["INT8, all layers (trial model)", "search images" if r.deploy else "EvalDataset",
                              mAP_points(r.int8_map)]] +
                            ([[f"INT8, {r.target.num_skipped} layers in float (verified)", "held-out images",
                               mAP_points(r.target.verified_map)]] if r.target else [])), "",
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
                                  *[round(r.proxy_scores[m][n], 2) for m in r.proxy_scores]]
                                 for i, n in enumerate(top)]))
    lines += ["", "Spearman rank correlation, proxy vs mAP: " +
              (", ".join(f"{m}: {v:.2f}" for m, v in r.spearman.items()) or "no proxy ranking"), ""]
    if r.target:
        lines += target_markdown(r)
    if "activation_distribution" in files:
        lines += ["## Distributions", "", f"![activations]({Path(files['activation_distribution']).name})", "",
                  f"![weights]({Path(files['weight_distribution']).name})", "",
                  "Outlier statistics per layer (max |x| / 99.99th percentile): `distribution_stats.json`.", ""]
    lines += [f"Analyzed config: `{files['analyzed_config']}`", ""]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


CANDIDATE_LABELS = {"INT8 target": "INT8 searched ({selection} selection)", "INT8 accuracy-only":
                    "INT8 accuracy-only choice", "INT8 all layers": "INT8 all layers"}


def candidate_row(r: AnalysisResult, name: str, fp32_ms: float | None) -> list[Any]:
    """A row of the target table: a candidate timed in the same rounds, its held-out mAP where it
    was verified (only candidates faster than the searched model are), the returned one marked."""
    t, acc = r.target, r.target.accuracy_only
    label = CANDIDATE_LABELS[name].format(selection=t.selection) + (" — **returned**" if name == t.chosen else "")
    found = t.candidates.get(name, {})
    num_float = found.get("num_float", {"INT8 target": t.num_skipped, "INT8 all layers": 0}.get(
        name, acc.num_float if acc is not None else "-"))
    if name == t.chosen:
        search = mAP_points(t.search_map)
    elif name == "INT8 all layers":
        search = mAP_points(r.int8_map)
    else:
        search = mAP_points(acc.simulated_map) if name != "INT8 target" and acc and acc.simulated_map is not None \
            else "-"
    verified = mAP_points(found["verified_map"]) if found.get("verified_map") is not None else "not verified"
    ms = t.latency.get(name)
    return [label, num_float, search, verified, mAP_points(t.deployed_map) if name == t.chosen else "-", _ms(ms),
            _ratio(ms / fp32_ms if ms and fp32_ms else None)]


def target_markdown(r: AnalysisResult) -> list[str]:
    """The target model section: images, mAP on both image sets, runtime parity, latency."""
    t, d = r.target, r.deploy
    fp32 = d.fp32_maps if d else {}
    parity = (f"**differs by {abs(mAP_points(t.deployed_map) - mAP_points(t.verified_map)):.1f} points (> 0.3): "
              "check the runtime**" if t.parity_flag else "agrees within 0.3 point")
    fp32_ms = t.latency.get("FP32")
    rows = [["FP32", "-", mAP_points(fp32.get("search")), mAP_points(fp32.get("heldout")), "-", _ms(fp32_ms), "1.00"]]
    rows += [candidate_row(r, name, fp32_ms) for name in ("INT8 target", "INT8 accuracy-only", "INT8 all layers")
             if name in t.latency or (name == "INT8 target")]
    budget = math.ceil(math.log2(len(r.ranking))) + 3
    return ["## Target model", "",
            (d.split if d else ""), "",
            f"Target: {mAP_points(t.target)} on EvalDataset = FP32 minus {mAP_points(r.fp32_map - t.target)} points; "
            f"the same drop on each image set: {mAP_points(t.search_target)} on the search images, "
            f"{mAP_points(t.heldout_target)} on the held-out images. "
            f"Target met (held-out): **{'yes' if t.met else 'NO'}**.", "",
            markdown_table(["model", "layers in float", "mAP search images", "mAP held-out (simulated)",
                            f"mAP held-out on {d.backend if d else 'runtime'}", "latency ms", "INT8/FP32"], rows), "",
            f"Returned: {t.chosen}, the fastest of the candidates timed in the same rounds that was verified "
            "to meet the target on the held-out images (a candidate slower than the one returned is not "
            "verified). mAP on the search images: trial model for the accuracy-only choice, the real model "
            "otherwise. "
            f"Runtime parity (held-out, {t.deployed_runtime} vs simulated): {parity}. Latency: "
            f"{t.deployed_runtime.split(' CPU')[0] if t.deployed_runtime else '-'}, batch 1, "
            f"{d.threads if d else '-'} thread(s), median of 100 runs per model taken in alternation (run by run). "
            f"Model: `{t.model_dir}`.", "",
            f"Layers in float: {', '.join(t.skip) or 'none'}"
            + (f" ({len(t.latency_base)} of them because they run faster in float on the runtime: "
               f"{', '.join(t.latency_base)})" if t.latency_base else "") + ".", "",
            *base_lines(r),
            f"Full evaluations for the target: {t.search_evaluations} ({len(t.tried)} in the binary search, "
            f"{t.verifications} verifying the real model; goal: at most ceil(log2 N) + 3 = {budget}); "
            f"{t.comparison_evaluations} more for the accuracy-only comparison.", "",
            "Binary search (prefix length → simulated mAP, search images): " +
            (", ".join(f"{k} → {mAP_points(v)}" for k, v in sorted(t.tried.items())) or "none needed"), ""]


def base_lines(r: AnalysisResult) -> list[str]:
    """The latency base: the candidates the runtime's profile found faster in float, measured end to end."""
    d = r.deploy
    if d is None or not d.layer_costs:
        return ["Per-layer float costs: not measured on this runtime (OpenVINO only): float layers chosen by mAP "
                "damage alone.", ""]
    if not d.base_trials:
        return ["No layer runs faster in float on the runtime's per-node profile (by 0.05 ms or more).", ""]
    rows = [[t["layer"], round(d.layer_costs[t["layer"]]["fp32_us"] / 1000, 3),
             round(d.layer_costs[t["layer"]]["int8_us"] / 1000, 3), t["base_ms"], t["with_layer_ms"],
             f"{t.get('saving_ms', 0):.3f} ± {t.get('error_ms', 0):.3f}", "yes" if t["kept"] else "no"]
            for t in d.base_trials]
    return ["Layers faster in float on the runtime (per-node profile), each measured end to end (paired runs): "
            "kept in float when the whole model gets faster by at least 0.05 ms and two standard errors:", "",
            markdown_table(["layer", "profile FP32 ms", "profile INT8 ms", "model ms before",
                            "model ms with it in float", "paired saving ms", "kept in float"], rows), ""]
