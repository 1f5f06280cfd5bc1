"""Unit tests of the ranking helpers (no model needed)."""
import math

import numpy as np
import pytest

from ptqdet.analysis.sensitivity import score_layers, spearman, sqnr_db


def test_score_layers_scores_each_new_layer_once_and_saves_after_each():
    calls, saves = [], []
    cache = {"b": 7.0}  # scored in an earlier, interrupted run

    def damage(name):
        calls.append(name)
        return float(ord(name))

    scores = score_layers(["a", "b", "c"], damage, cache, lambda: saves.append(dict(cache)), False, "t")
    assert scores == {"a": 97.0, "b": 7.0, "c": 99.0}
    assert calls == ["a", "c"]  # the cached layer is not scored again
    assert saves == [{"b": 7.0, "a": 97.0}, {"b": 7.0, "a": 97.0, "c": 99.0}]


def test_spearman_sign_and_too_few_layers():
    a = {"x": 1.0, "y": 2.0, "z": 3.0, "w": 4.0}
    assert spearman(a, {k: 10 * v for k, v in a.items()}) == 1.0
    assert spearman(a, {k: -v for k, v in a.items()}) == -1.0
    assert math.isnan(spearman({"x": 1.0}, {"x": 2.0}))


def test_sqnr_db_drops_with_noise():
    ref = [np.ones((4, 4), dtype=np.float32)]
    small = sqnr_db(ref, [ref[0] + 0.01])
    large = sqnr_db(ref, [ref[0] + 0.1])
    assert small > large
    assert small == pytest.approx(40.0, abs=0.1)
