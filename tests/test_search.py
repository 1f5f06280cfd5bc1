"""The analysis' decisions (ptqdet.analysis.search) on synthetic curves: no model, no data."""
import math

import pytest

from ptqdet.analysis.search import order_layers, search_mode, search_prefix, verification_step


class Curve:
    """simulate(k) / verify(k) from a list of mAPs indexed by layers in float; records the calls."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def __call__(self, k):
        self.calls.append(k)
        return self.values[k]


def _budget(n):
    return math.ceil(math.log2(n + 1))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100])
def test_monotone_curve_gives_the_shortest_prefix(n):
    for need in range(n + 1):  # the curve meets the target from `need` layers in float on
        curve = Curve([0.30 + 0.1 * (k >= need) for k in range(n + 1)])
        verify = Curve(curve.values)
        out = search_prefix(n, 0.35, curve, verify)
        assert out.num_float == need
        assert out.met and out.verified == pytest.approx(0.40) and out.verifications == 1
        assert len(curve.calls) == len(set(curve.calls)) <= _budget(n)  # each prefix evaluated once
        assert n not in curve.calls  # the FP32 end is assumed, never evaluated
        assert out.tried == {k: curve.values[k] for k in curve.calls}
        assert out.evaluations == len(out.tried) + out.verifications
        assert out.simulated == (curve.values[need] if need in out.tried else None)


def test_met_at_zero_layers():
    sim, verify = Curve([0.5] * 11), Curve([0.5] * 11)
    out = search_prefix(10, 0.4, sim, verify)
    assert out.num_float == 0 and out.met and out.simulated == 0.5
    assert verify.calls == [0]


def test_never_met_stops_at_all_layers_in_float():
    n = 20
    sim, verify = Curve([0.1] * (n + 1)), Curve([0.1] * (n + 1))
    out = search_prefix(n, 0.4, sim, verify)
    assert out.num_float == n and not out.met and out.verified == 0.1
    assert out.simulated is None  # k = N is the FP32 end: not simulated
    assert verify.calls == [n] and out.verifications == 1  # nothing left to add after N
    assert len(sim.calls) <= _budget(n)


def test_noisy_curve_ends_on_a_crossing_and_steps_forward_on_a_missed_verification():
    n = 100
    values = [0.30 + 0.001 * k + (0.05 if k % 7 == 3 else 0.0) for k in range(n + 1)]  # noisy, rising
    sim = Curve(values)
    out_sim = search_prefix(n, 0.38, sim, Curve(values))
    k = out_sim.num_float
    assert values[k] >= 0.38 and (k == 0 or values[k - 1] < 0.38)  # a crossing of the target
    assert len(sim.calls) <= _budget(n)
    # the real model misses where the simulation met: two steps forward, then met
    step = verification_step(n)
    real = Curve([0.30] * (k + 2 * step) + [0.50] * (n + 1 - k - 2 * step))
    out = search_prefix(n, 0.38, Curve(values), real)
    assert real.calls == [k, k + step, k + 2 * step]
    assert out.num_float == k + 2 * step and out.met and out.verifications == 3
    assert out.simulated is None  # the verified prefix was never simulated


def test_verification_gives_up_after_max_verifications_on_the_last_prefix_verified():
    """Three misses: the result is the third prefix verified (the one the saved model has in
    float), not one step beyond it (the analysis used to report that unverified prefix)."""
    n = 100
    verify = Curve([0.1] * (n + 1))
    out = search_prefix(n, 0.38, Curve([0.5] * (n + 1)), verify, max_verifications=3)
    assert verify.calls == [0, verification_step(n), 2 * verification_step(n)]
    assert out.verifications == 3 and not out.met and out.num_float == verify.calls[-1] and out.verified == 0.1


def test_progress_callback_once_per_simulation():
    steps = []
    sim = Curve([0.0] * 5 + [1.0] * 60)
    search_prefix(64, 0.5, sim, Curve(sim.values), on_step=lambda: steps.append(1))
    assert len(steps) == len(sim.calls)


def test_no_layers():
    out = search_prefix(0, 0.3, Curve([]), Curve([0.4]))
    assert out.num_float == 0 and out.met and out.tried == {}


def test_search_follows_quantize_one_and_proxy_breaks_ties():
    assert search_mode(["revert", "quantize"]) == "quantize"
    assert search_mode(["revert"]) == "revert"
    metric = {"quantize": {"a": 0.0, "b": 0.02, "c": 0.0, "d": 0.0}, "revert": {"a": 9.0, "b": 0.0, "c": 0.0, "d": 0.0}}
    proxy = {"quantize": {"a": 1.0, "c": 3.0}}
    assert order_layers(["a", "b", "c", "d"], metric, proxy) == ["b", "c", "a", "d"]
    assert order_layers(["a", "b", "c", "d"], metric, {}) == ["b", "a", "c", "d"]  # stable: graph order


def test_latency_order_puts_accuracy_per_ms_first_and_leaves_the_base_out():
    from ptqdet.analysis.search import latency_order

    damage = {"a": 0.04, "b": 0.02, "c": 0.0, "d": 0.01, "e": 0.03}
    cost = {"a": 1.0, "b": 0.1, "c": 0.5, "d": -0.3, "e": 0.2}  # d: faster in float but not in the base
    # per ms: b 0.2, e 0.15, a 0.04, d 0.01 / floor (free) -> first; c has no damage: last
    assert latency_order(list(damage), damage, cost, base=[]) == ["d", "b", "e", "a", "c"]
    assert latency_order(list(damage), damage, cost, base=["d", "b"]) == ["e", "a", "c"]
    # without costs every layer costs the floor: the order is the damage order
    assert latency_order(list(damage), damage, {}, base=[]) == ["a", "e", "b", "d", "c"]


def test_base_candidates_are_the_profiled_savings_largest_first():
    from ptqdet.analysis.search import base_candidates

    cost = {"a": -1.0, "b": -0.04, "c": 0.3, "d": -0.2, "e": -0.06}
    assert base_candidates(cost, min_saving_ms=0.05) == ["a", "d", "e"]
    assert base_candidates(cost, min_saving_ms=0.05, limit=2) == ["a", "d"]


def test_known_or_probed_empty_prefix_ends_the_search_at_once():
    sim = Curve([0.5] * 11)
    out = search_prefix(10, 0.4, sim, Curve([0.5] * 11), at_zero=0.45)
    assert out.num_float == 0 and sim.calls == [] and out.simulated == 0.45 and out.evaluations == 1
    sim = Curve([0.5] * 11)
    out = search_prefix(10, 0.4, sim, Curve([0.5] * 11), probe_zero=True)
    assert out.num_float == 0 and sim.calls == [0] and out.tried == {0: 0.5} and out.evaluations == 2
    # a probe that misses: the binary search goes on above 0, within 1 + ceil(log2 N) simulations
    values = [0.3] * 6 + [0.5] * 5
    sim = Curve(values)
    out = search_prefix(10, 0.4, sim, Curve(values), probe_zero=True)
    assert out.num_float == 6 and sim.calls[0] == 0 and len(sim.calls) <= 1 + math.ceil(math.log2(10))


def test_verification_is_judged_against_its_own_target():
    """Search images and held-out images have different FP32 mAPs: each is held to its own target."""
    sim, held = Curve([0.60] * 11), Curve([0.45] * 11)
    out = search_prefix(10, 0.55, sim, held, verify_target=0.44, at_zero=0.60)
    assert out.met and out.num_float == 0 and out.verified == 0.45
    out = search_prefix(10, 0.55, Curve([0.60] * 11), Curve([0.45] * 11), verify_target=0.46, at_zero=0.60)
    assert not out.met and out.verifications == 3  # missed on the held-out images: stepped forward


def test_fastest_verified_returns_the_fastest_candidate_that_meets_the_target():
    from ptqdet.analysis.search import fastest_verified

    times = {"INT8 target": 6.8, "INT8 all layers": 6.5, "INT8 accuracy-only": 6.6}
    verified = []

    def verify(name, met=("INT8 accuracy-only",)):
        verified.append(name)
        return name in met

    # the searched target is slower than two candidates: both are verified, fastest first
    assert fastest_verified(times, "INT8 target", verify) == "INT8 accuracy-only"
    assert verified == ["INT8 all layers", "INT8 accuracy-only"]
    # the searched target is the fastest: nothing else is verified
    verified.clear()
    assert fastest_verified({**times, "INT8 target": 6.0}, "INT8 target", verify) == "INT8 target"
    assert verified == []
    # no faster candidate meets the target: the searched one stays
    assert fastest_verified(times, "INT8 target", lambda name: False) == "INT8 target"
    # the searched target missed it: a candidate that meets it is taken, else none
    assert fastest_verified(times, None, lambda name: name == "INT8 target") == "INT8 target"
    assert fastest_verified(times, None, lambda name: False) is None
