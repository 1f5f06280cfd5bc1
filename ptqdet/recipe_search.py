"""post_quant.py --recipe_search: a grid of PTQ recipes tried side by side, the best one kept.

Each grid point (calibration algorithm x weight quantization x recovery methods x calibration
batches) is a recipe (recipes.Recipe) applied to the config's PTQ section; a trial quantizes
the model with it and measures its mAP on FastEvalDataset (EvalDataset when the config has
none) as the quantized graph computes it (fake-quant ops on FP32 kernels, what the analysis
verifies). With --workers N the trials are Ray tasks on N workers (analysis/parallel.py starts
or joins Ray); without, they run one after another in this process. Each finished trial is
cached in save_dir/.work/recipe_search/<hash>/trials.json: an interrupted search resumes. The
best recipe is verified on EvalDataset, its model written to save_dir and its PTQ section to
save_dir/<config>_recipe_ptq.yaml. On a cluster, every machine must see the model, the
datasets and save_dir at the same paths (a shared file system): trials read and write files.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .backends import open_backend
from .config import ConfigError, PTQDetConfig, PTQSettings, _ptq_settings
from .files import ModelFiles, read_cache_json
from .model import BackendOptions, default_threads
from .paddle_static import atomic_dir
from .recipes import Recipe, apply_recipe
from .report import atomic_write_text, machine_info, mAP_points, markdown_table, write_json

# --recovery names -> the PTQ keys they set, on top of RECOVERY_OFF ("a+b": both)
RECOVERY_OFF = {"equalize_depthwise": False, "bias_correction": False, "round_type": "round", "reconstruction": "none"}
RECOVERY_METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "equalize": {"equalize_depthwise": True},
    "bias_correction": {"bias_correction": True},
    "adaround": {"round_type": "adaround"},
    "brecq": {"reconstruction": "brecq"},
    "qdrop": {"reconstruction": "qdrop"},
}
TRIAL_ERRORS = (ConfigError, RuntimeError, ValueError, OSError, AssertionError)


@dataclass(frozen=True)
class RecipeGrid:
    """The axes of the grid (every combination is tried)."""

    algos: tuple[str, ...]
    weight_quant: tuple[str, ...]
    recovery: tuple[str, ...]  # RECOVERY_METHODS names, "a+b" combining two
    batch_nums: tuple[int, ...]


@dataclass
class RecipeTrial:
    recipe: str
    ptq: dict[str, Any]
    fast_map: float | None = None  # ranking mAP (FastEvalDataset)
    seconds: float | None = None  # PTQ + evaluation
    error: str | None = None


@dataclass
class RecipeSearchResult:
    trials: list[RecipeTrial]  # in grid order
    best: RecipeTrial | None
    ranked_on: str
    fp32_map: float | None = None  # EvalDataset
    verified_map: float | None = None  # the best recipe's model on EvalDataset
    seconds: float = 0.0
    workers: int = 0
    files: dict[str, str] = field(default_factory=dict)


def recovery_keys(name: str) -> dict[str, Any]:
    keys = dict(RECOVERY_OFF)
    for part in name.split("+"):
        if part not in RECOVERY_METHODS:
            raise ConfigError(f"--recovery {part!r} is not one of {', '.join(RECOVERY_METHODS)} (combine with +)")
        keys.update(RECOVERY_METHODS[part])
    return keys


def grid_recipes(cfg: PTQDetConfig, grid: RecipeGrid) -> list[Recipe]:
    """One recipe per grid point, checked against the config (ConfigError on a bad value)."""
    recipes = []
    for algo, weights, recovery, batches in itertools.product(grid.algos, grid.weight_quant, grid.recovery,
                                                              grid.batch_nums):
        ptq = {**recovery_keys(recovery), "algo": algo, "weight_quantize_type": weights, "batch_nums": batches}
        if not ptq["equalize_depthwise"]:
            ptq["equalize_conv_strength"] = 0.0  # needs equalize_depthwise
        recipe = Recipe(f"{algo}, {weights}, {recovery}, {batches} batches", ptq)
        _ptq_settings(f"{cfg.path}, recipe {recipe.name!r}", apply_recipe(cfg, recipe).ptq.to_dict())  # type: ignore
        recipes.append(recipe)
    if not recipes:
        raise ConfigError("the recipe grid is empty: give at least one value per axis")
    return recipes


def trial_dir(work_dir: Path, recipe: Recipe) -> Path:
    return work_dir / "".join(c if c.isalnum() else "_" for c in recipe.name)


def run_trial(cfg: PTQDetConfig, recipe: Recipe, work_dir: Path, dataset_key: str, device: str,
              threads: int) -> RecipeTrial:
    """PTQ with the recipe into work_dir/<recipe>, then its mAP on dataset_key (runs in a worker
    or in this process; a failing recipe is a trial with an error, not a failed search)."""
    from .metrics import evaluate
    from .quantize import SAVED_FILES, quantize

    variant = apply_recipe(cfg, recipe)
    trial = RecipeTrial(recipe.name, variant.ptq.to_dict())
    start = time.perf_counter()
    try:
        out = trial_dir(work_dir, recipe)
        quantize(variant, out, device=device, progress=False)
        predictor = open_backend("paddle", ModelFiles(out, *SAVED_FILES),
                                 BackendOptions(device=device, threads=threads, mkldnn=False))
        trial.fast_map = evaluate(predictor, variant, dataset_key, progress=False).map
    except TRIAL_ERRORS as exc:
        trial.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    trial.seconds = time.perf_counter() - start
    return trial


def run_trial_in_worker(config_path: Path, cwd: Path, recipe: Recipe, work_dir: Path, dataset_key: str, device: str,
                        threads: int) -> RecipeTrial:
    """run_trial in a Ray worker: the config loaded there (ppdet's reader transforms live in its
    process-wide workspace, which a pickled config does not carry), relative paths resolved
    from the driver's folder (`cwd`, the same path on every machine)."""
    from .config import load_config
    from .stdout import quiet_libraries

    quiet_libraries(True)
    os.chdir(cwd)
    return run_trial(load_config(config_path), recipe, work_dir, dataset_key, device, threads)


def run_trials(cfg: PTQDetConfig, recipes: list[Recipe], work_dir: Path, dataset_key: str, device: str,
               threads: int | None, parallel: Any, on_result: Callable[[RecipeTrial], None], progress: bool) -> None:
    """Every recipe's trial: in this process (parallel None) or as Ray tasks (a ParallelOptions)."""
    bar = None
    if progress:
        from tqdm import tqdm
        workers = f"{parallel.workers} workers" if parallel else "in this process"
        bar = tqdm(total=len(recipes), desc=f"recipe trials ({workers})", unit="recipe")
    if parallel is None:
        for recipe in recipes:
            on_result(run_trial(cfg, recipe, work_dir, dataset_key, device, threads or default_threads()))
            if bar is not None:
                bar.update()
    else:
        from .ray_pool import connect, thread_env

        ray = connect(parallel, quiet=not progress)
        task = ray.remote(run_trial_in_worker).options(num_cpus=parallel.threads, max_retries=2,
                                                       runtime_env={"env_vars": thread_env(parallel.threads)})
        pending = [task.remote(cfg.path.resolve(), Path.cwd(), r, work_dir.resolve(), dataset_key, device,
                               parallel.threads) for r in recipes]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            on_result(ray.get(done[0]))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()


def search_recipes(cfg: PTQDetConfig, grid: RecipeGrid, save_dir: Path, parallel: Any = None, device: str = "cpu",
                   threads: int | None = None, progress: bool = True) -> RecipeSearchResult:
    """Try every recipe of the grid, rank them by mAP on FastEvalDataset, verify the best on
    EvalDataset; write its model to save_dir, its config and the report next to it."""
    from .analysis.context import cache_key
    from .quantize import check_outputs

    check_outputs(cfg, save_dir)
    recipes = grid_recipes(cfg, grid)
    ranked_on = "FastEvalDataset" if cfg.has_dataset("FastEvalDataset") else "EvalDataset"
    start = time.perf_counter()
    work_dir = save_dir.parent / f".{save_dir.name}.work" / "recipe_search" / cache_key(cfg, {"recipe_search": 1})
    cache_path = work_dir / "trials.json"
    cached: dict[str, Any] = read_cache_json(cache_path, "the recipe search's cache") or {}

    def on_result(trial: RecipeTrial) -> None:
        cached[trial.recipe] = asdict(trial)
        write_json(cache_path, cached)

    todo = [r for r in recipes if r.name not in cached]
    run_trials(cfg, todo, work_dir, ranked_on, device, threads, parallel, on_result, progress)
    trials = [RecipeTrial(**cached[r.name]) for r in recipes]
    scored = [t for t in trials if t.fast_map is not None]
    best = max(scored, key=lambda t: t.fast_map) if scored else None  # max keeps the first of equals: grid order
    result = RecipeSearchResult(trials, best, ranked_on, workers=parallel.workers if parallel else 0)
    if best is not None:
        verify_best(cfg, recipes[[r.name for r in recipes].index(best.recipe)], work_dir, save_dir, result, device,
                    threads, progress)
    result.seconds = time.perf_counter() - start
    result.files.update(write_report(cfg, save_dir, result))
    return result


def verify_best(cfg: PTQDetConfig, recipe: Recipe, work_dir: Path, save_dir: Path, result: RecipeSearchResult,
                device: str, threads: int | None, progress: bool) -> None:
    """The best trial's model copied to save_dir, FP32 and its mAP on EvalDataset, its config written."""
    from .files import resolve_model_files
    from .metrics import evaluate
    from .quantize import SAVED_FILES

    with atomic_dir(save_dir, create=False) as tmp:
        shutil.copytree(trial_dir(work_dir, recipe), tmp)
    options = BackendOptions(device=device, threads=threads, mkldnn=False)
    fp32 = resolve_model_files(cfg.model_dir, cfg.model_filename, cfg.params_filename)
    result.fp32_map = evaluate(open_backend("paddle", fp32, options), cfg, "EvalDataset", progress=progress,
                               desc="eval FP32").map
    best = open_backend("paddle", ModelFiles(save_dir, *SAVED_FILES), options)
    result.verified_map = evaluate(best, cfg, "EvalDataset", progress=progress, desc="verify best recipe").map
    out = save_dir / f"{cfg.path.stem}_recipe_ptq.yaml"
    result.files["config"] = str(write_recipe_config(cfg, apply_recipe(cfg, recipe).ptq, recipe.name, out))


def write_recipe_config(cfg: PTQDetConfig, ptq: PTQSettings, name: str, out: Path) -> Path:
    """A config inheriting the input one (_BASE_, relative to `out`) with the recipe's PTQ section."""
    base = os.path.relpath(cfg.path.resolve(), out.parent.resolve())
    header = (f"# Written by post_quant.py --recipe_search from {cfg.path}: the best recipe of its grid ({name}).\n"
              f"# Quantize with: python post_quant.py --config_path {out} --save_dir <dir>\n")
    return atomic_write_text(out, header + yaml.safe_dump({"_BASE_": [base], "PTQ": ptq.to_dict()}, sort_keys=False))


def write_report(cfg: PTQDetConfig, save_dir: Path, r: RecipeSearchResult) -> dict[str, str]:
    rows = [[t.recipe, f"{mAP_points(t.fast_map):.1f}" if t.fast_map is not None else "-",
             f"{t.seconds:.0f}" if t.seconds else "-", "best" if t is r.best else (t.error or "")]
            for t in sorted(r.trials, key=lambda t: -(t.fast_map if t.fast_map is not None else -1.0))]
    table = markdown_table(["recipe", f"mAP ({r.ranked_on})", "trial s", ""], rows)
    data = {"config": str(cfg.path), "ranked_on": r.ranked_on, "workers": r.workers, "seconds": round(r.seconds, 1),
            "fp32_map": r.fp32_map, "verified_map": r.verified_map, "best": r.best.recipe if r.best else None,
            "trials": [asdict(t) for t in r.trials], "machine": machine_info()}
    md = save_dir / "recipe_search.md"
    atomic_write_text(md, f"# PTQ recipe search: {cfg.path}\n\n{table}\n")
    return {"report": str(write_json(save_dir / "recipe_search.json", data)), "table": str(md)}


def _list(flag: str, text: str | None, default: list[Any], kind: type = str) -> tuple[Any, ...]:
    values = [v.strip() for v in text.split(",") if v.strip()] if text is not None else default
    try:
        return tuple(dict.fromkeys(kind(v) for v in values))
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r} is not a comma list of {kind.__name__}") from exc


def grid_from_flags(cfg: PTQDetConfig, algos: str | None, weight_quant: str | None, recovery: str | None,
                    batch_nums: str | None) -> RecipeGrid:
    """post_quant.py's grid flags (comma lists; None: the default, from the config)."""
    return RecipeGrid(algos=_list("--algos", algos, [cfg.ptq.algo, "mse"]),
                      weight_quant=_list("--weight_quant", weight_quant, [cfg.ptq.weight_quantize_type]),
                      recovery=_list("--recovery", recovery, ["none", "equalize"]),
                      batch_nums=_list("--batch_nums", batch_nums, [cfg.ptq.batch_nums], int))


def summary_table(r: RecipeSearchResult) -> str:
    rows = [["recipes tried", f"{len(r.trials)} ({sum(t.error is not None for t in r.trials)} failed)"],
            ["workers", r.workers or "none (in this process)"],
            ["best recipe", r.best.recipe if r.best else "none succeeded"],
            [f"best mAP ({r.ranked_on})", mAP_points(r.best.fast_map) if r.best else "-"],
            ["FP32 mAP (EvalDataset)", mAP_points(r.fp32_map) if r.fp32_map is not None else "-"],
            ["best recipe mAP (EvalDataset, verified)", mAP_points(r.verified_map) if r.verified_map is not None
             else "-"],
            ["time", f"{r.seconds:.0f} s"]]
    return markdown_table(["PTQ recipe search", "value"], rows)
