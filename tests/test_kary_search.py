"""The k-ary target search (analysis.py --workers k) on synthetic curves: no model, no Ray."""
import math

import pytest

from ptqdet.analysis.kary_search import kary_points, kary_rounds, search_prefix_kary
from ptqdet.analysis.search import search_prefix


class Batch:
    """simulate_many(ks) from a list of mAPs; records each round's points."""

    def __init__(self, values):
        self.values = list(values)
        self.rounds = []

    def __call__(self, ks):
        self.rounds.append(list(ks))
        return {k: self.values[k] for k in ks}


def test_points_are_inside_distinct_and_width_one_is_the_binary_midpoint():
    for lo in range(-1, 20):
        for hi in range(lo + 2, 40):
            assert kary_points(lo, hi, 1) == [(lo + hi) // 2]
            for width in (2, 3, 5):
                points = kary_points(lo, hi, width)
                assert len(points) == min(width, hi - lo - 1) == len(set(points))
                assert all(lo < p < hi for p in points)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 98])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_monotone_curve_gives_the_binary_search_answer_in_fewer_rounds(n, width):
    for need in range(n + 1):
        values = [0.30 + 0.1 * (k >= need) for k in range(n + 1)]
        batch = Batch(values)
        out, rounds = search_prefix_kary(n, 0.35, batch, values.__getitem__, width)
        serial = search_prefix(n, 0.35, values.__getitem__, values.__getitem__)
        assert out.num_float == serial.num_float == need and out.met
        assert rounds == len(batch.rounds) <= kary_rounds(n, width)
        assert all(len(r) <= width for r in batch.rounds)
        assert n not in out.tried  # the FP32 end is never simulated
        assert out.evaluations == len(out.tried) + out.verifications
        if width == 1:  # the binary search itself
            assert out.tried == serial.tried


def test_two_workers_on_98_layers_the_issue_budget():
    """N = 98 (the demo PicoDet-s), k = 2: 5 rounds instead of 7, at most 10 simulations
    (ceil(log2 N) + 3 = 10); the binary search takes 7 rounds of one."""
    assert kary_rounds(98, 1) == math.ceil(math.log2(99)) == 7
    assert kary_rounds(98, 2) == 5
    assert 2 * kary_rounds(98, 2) <= math.ceil(math.log2(98)) + 3


def test_noisy_curve_ends_on_a_crossing_and_verification_steps_forward():
    n = 100
    values = [0.30 + 0.001 * k + (0.05 if k % 7 == 3 else 0.0) for k in range(n + 1)]
    verified = []

    def verify(k):
        verified.append(k)
        return 0.0 if len(verified) == 1 else values[k]  # the real model misses once

    out, _ = search_prefix_kary(n, 0.36, Batch(values), verify, 2)
    k0 = verified[0]
    assert values[k0] >= 0.36 and (k0 == 0 or values[k0 - 1] < 0.36)  # a crossing of the simulated curve
    assert out.num_float == verified[-1] > k0 and out.verifications == 2 and out.met


def test_width_must_be_positive():
    with pytest.raises(ValueError):
        search_prefix_kary(10, 0.5, Batch([0.0] * 11), lambda k: 0.0, 0)


@pytest.mark.parametrize("batches,parts", [(15, 2), (15, 4), (3, 8), (1, 2), (120, 7)])
def test_split_batches_covers_every_batch_once_in_order(batches, parts):
    """--workers splits a simulation into contiguous runs of batches, one per worker: together
    they are the batches in order, none empty, at most `parts`, sizes within one of each other."""
    from ptqdet.analysis.parallel import split_batches

    runs = split_batches(batches, parts)
    assert [i for start, stop in runs for i in range(start, stop)] == list(range(batches))
    assert len(runs) == min(parts, batches) and all(stop > start for start, stop in runs)
    sizes = [stop - start for start, stop in runs]
    assert max(sizes) - min(sizes) <= 1
