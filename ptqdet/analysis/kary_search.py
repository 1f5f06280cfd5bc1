"""The target search with k workers: a k-ary search (k prefix lengths simulated at once per
round) in place of search.py's binary search, as a pure function of evaluation callbacks.

With width k the interval of candidate prefix lengths shrinks (k + 1)-fold per round, so
ceil(log_{k+1}(N + 1)) rounds instead of ceil(log2(N + 1)), at up to k simulations each
(N = 98, k = 2: 5 rounds and at most 10 simulations instead of 7 and 7). Width 1 asks exactly
the points the binary search asks. The verification that follows is search_prefix's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from .search import MAX_VERIFICATIONS, SearchOutcome, verify_prefix


def kary_points(lo: int, hi: int, width: int) -> list[int]:
    """Up to `width` prefix lengths strictly between lo and hi, evenly spread (width 1: the
    binary search's midpoint (lo + hi) // 2)."""
    q = min(width, hi - lo - 1)
    return sorted({lo + (j * (hi - lo)) // (q + 1) for j in range(1, q + 1)})


def kary_rounds(num_layers: int, width: int) -> int:
    """Rounds a k-ary search over prefix lengths 0..num_layers - 1 takes at most."""
    rounds, span = 0, num_layers + 1  # the open interval (lo, hi) = (-1, num_layers)
    while span > 1:
        span = -(-span // (width + 1))
        rounds += 1
    return rounds


def search_prefix_kary(num_layers: int, target: float, simulate_many: Callable[[list[int]], dict[int, float]],
                       verify: Callable[[int], float], width: int, max_verifications: int = MAX_VERIFICATIONS,
                       on_round: Callable[[Iterable[int]], None] | None = None, verify_target: float | None = None,
                       at_zero: float | None = None, probe_zero: bool = False,
                       before_verify: Callable[[], None] | None = None) -> tuple[SearchOutcome, int]:
    """search_prefix with `width` simulations per round: (its outcome, the rounds taken).

    simulate_many(ks): {k: mAP with the first k layers in float} for every k asked, run at
    once (in parallel). Invariant as in search_prefix: simulate(hi) >= target (hi = N, the
    FP32 model, never evaluated) and simulate(lo) < target (lo = -1: none). Each round keeps
    the first crossing among its points, so a monotone curve gives the binary search's
    answer; a noisy one, some crossing. on_round(points): after each round (a progress bar).
    verify_target, at_zero, probe_zero: as in search_prefix (probe_zero: a round of its own).
    before_verify: called once the rounds are over, before the first verify (to start other
    work on the idle workers while the driver verifies).
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    tried: dict[int, float] = {}
    verify_target = target if verify_target is None else verify_target
    lo, hi, rounds = -1, num_layers, 0
    if at_zero is None and probe_zero and num_layers > 0:
        at_zero = tried[0] = simulate_many([0])[0]
        rounds += 1
        if on_round is not None:
            on_round([0])
    if at_zero is not None:
        lo, hi = (-1, 0) if at_zero >= target else (0, num_layers)
    while hi - lo > 1:
        points = kary_points(lo, hi, width)
        values = simulate_many(points)
        tried.update({p: values[p] for p in points})
        rounds += 1
        met = [p for p in points if values[p] >= target]
        if met:
            below = [p for p in points if p < met[0]]
            lo, hi = (below[-1] if below else lo), met[0]
        else:
            lo = points[-1]
        if on_round is not None:
            on_round(points)
    if before_verify is not None:
        before_verify()
    # the verification of search_prefix (same steps, same budget)
    outcome = verify_prefix(num_layers, hi, verify, verify_target, max_verifications, tried, at_zero)
    return outcome, rounds
