"""The recipe grid and the --workers flags (no Ray, no PTQ): what post_quant.py --recipe_search would try."""
import argparse

import pytest

from ptqdet import cli
from ptqdet.config import ConfigError
from ptqdet.recipe_search import RecipeGrid, grid_from_flags, grid_recipes, recovery_keys


def test_grid_is_every_combination_with_recovery_reset(pico_cfg):
    grid = RecipeGrid(algos=("avg", "mse"), weight_quant=("channel_wise_abs_max", "abs_max"),
                      recovery=("none", "equalize+bias_correction"), batch_nums=(2, 4))
    recipes = grid_recipes(pico_cfg, grid)
    assert len(recipes) == 16 and len({r.name for r in recipes}) == 16
    none = recipes[0].ptq
    assert none["algo"] == "avg" and none["batch_nums"] == 2 and none["weight_quantize_type"] == "channel_wise_abs_max"
    assert pico_cfg.ptq.equalize_depthwise and not none["equalize_depthwise"]  # "none" turns the config's recovery off
    both = recovery_keys("equalize+bias_correction")
    assert both["equalize_depthwise"] and both["bias_correction"] and both["reconstruction"] == "none"


def test_bad_grid_values_name_the_flag_or_key(pico_cfg):
    with pytest.raises(ConfigError, match="--recovery 'magic'"):
        grid_recipes(pico_cfg, RecipeGrid(("avg",), ("abs_max",), ("none+magic",), (1,)))
    with pytest.raises(ConfigError, match="PTQ.algo 'nope'"):
        grid_recipes(pico_cfg, RecipeGrid(("nope",), ("abs_max",), ("none",), (1,)))
    with pytest.raises(ConfigError, match="batch_nums"):
        grid_from_flags(pico_cfg, None, None, None, "4,x")
    with pytest.raises(ConfigError, match="empty"):
        grid_recipes(pico_cfg, RecipeGrid((), ("abs_max",), ("none",), (1,)))


def test_grid_defaults_come_from_the_config(pico_cfg):
    grid = grid_from_flags(pico_cfg, None, None, None, None)
    assert grid == RecipeGrid((pico_cfg.ptq.algo, "mse"), (pico_cfg.ptq.weight_quantize_type,), ("none", "equalize"),
                              (pico_cfg.ptq.batch_nums,))


def test_workers_flags():
    parser = argparse.ArgumentParser()
    cli.add_ray_flags(parser, "trials")
    assert cli.parallel_options(parser.parse_args([])) is None
    opts = cli.parallel_options(parser.parse_args(["--workers", "3", "--ray_address", "10.0.0.1:6379"]))
    assert (opts.workers, opts.threads, opts.address) == (3, 1, "10.0.0.1:6379")
    with pytest.raises(ConfigError, match="--ray_address needs --workers"):
        cli.parallel_options(parser.parse_args(["--ray_address", "10.0.0.1:6379"]))
    with pytest.raises(ConfigError, match="at least 1"):
        cli.parallel_options(parser.parse_args(["--workers", "0"]))
