"""The analysis' decisions, as pure functions of scores and evaluation callbacks (no model):
which ranking to follow, the order of the layers, and the search for the shortest prefix of
that order to keep in float so that the model meets a target mAP."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

RANK_MODES = ("quantize", "revert")
MAX_VERIFICATIONS = 3
# a layer the runtime's per-node profile shows at least this much faster in float (per image) is
# a candidate for the latency base; it joins it when the whole model is measured faster by as much
MIN_SAVING_MS = 0.05
MAX_BASE_CANDIDATES = 12  # candidates measured end to end (each costs a latency measurement)
COST_FLOOR_MS = 1e-3  # a layer measured as free (or faster) in float still costs a little


def search_mode(modes: Iterable[str]) -> str:
    """The ranking the target search follows: "quantize one" when it was computed. Reverting one
    layer of a broken INT8 model moves a small FastEval set's mAP by noise beyond the few worst
    layers, so the "revert one" prefix meeting a target is far longer (docs/results/findings.md)."""
    modes = list(modes)
    return "quantize" if "quantize" in modes else modes[0]


def order_layers(layers: Iterable[str], metric_scores: Mapping[str, Mapping[str, float]],
                 proxy_scores: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Layers by mAP damage in the followed ranking (search_mode), most damaging first; ties
    (e.g. all zero on a small set) are broken by the proxy's damage in the same mode."""
    mode = search_mode(metric_scores)
    tie_break = proxy_scores.get(mode, {})
    return sorted(layers, key=lambda n: (metric_scores[mode][n], tie_break.get(n, 0.0)), reverse=True)


def verification_step(num_layers: int) -> int:
    """Layers added to the float prefix after a verification that missed the target."""
    return max(1, num_layers // 50)


@dataclass(frozen=True)
class SearchOutcome:
    """Where the search stopped: keep the first `num_float` layers of the order in float."""

    num_float: int
    simulated: float | None  # simulated mAP at num_float (None: not evaluated there)
    verified: float | None  # mAP of the real model at num_float (None: never verified)
    met: bool  # verified >= target
    tried: dict[int, float] = field(default_factory=dict)  # binary search: prefix length -> simulated mAP
    verifications: int = 0

    @property
    def evaluations(self) -> int:
        """Full evaluations the search spent: its binary search and its verifications."""
        return len(self.tried) + self.verifications


def search_prefix(num_layers: int, target: float, simulate: Callable[[int], float], verify: Callable[[int], float],
                  max_verifications: int = MAX_VERIFICATIONS, on_step: Callable[[], None] | None = None,
                  verify_target: float | None = None, at_zero: float | None = None, probe_zero: bool = False
                  ) -> SearchOutcome:
    """Shortest prefix length k (0..num_layers) with simulate(k) >= target, by binary search,
    then verify(k) on the real model, stepping k forward on a miss.

    simulate(k): mAP of the trial model with the first k layers in float; assumed to meet the
    target at k = num_layers (the FP32 model), which is never evaluated. For a monotone curve
    the result is the shortest prefix; for a noisy one, a k where the curve crosses the target
    (simulate(k) >= target > simulate(k - 1)). At most ceil(log2(num_layers + 1)) simulations.
    verify(k): mAP of the model that quantization makes with that skip list; at most
    max_verifications calls, each miss but the last adding verification_step(num_layers)
    layers: the result is always the last prefix verified.
    on_step: called after each simulation (a progress bar).
    verify_target: what verify(k) must reach (default: target; verification runs on other images).
    at_zero: simulate(0) when already known (not counted in tried): when it meets the target,
    the search is over at once. probe_zero: simulate(0) first (counted), for a search whose empty
    prefix is likely to meet the target (a latency base already in float).
    """
    tried: dict[int, float] = {}
    verify_target = target if verify_target is None else verify_target
    # invariant: simulate(hi) >= target (hi = N is the FP32 model), simulate(lo) < target (lo = -1: none)
    lo, hi = -1, num_layers
    if at_zero is None and probe_zero and num_layers > 0:
        at_zero = tried[0] = simulate(0)
        if on_step is not None:
            on_step()
    if at_zero is not None:
        lo, hi = (-1, 0) if at_zero >= target else (0, num_layers)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = simulate(mid)
        if tried[mid] >= target:
            hi = mid
        else:
            lo = mid
        if on_step is not None:
            on_step()
    return verify_prefix(num_layers, hi, verify, verify_target, max_verifications, tried, at_zero)


def verify_prefix(num_layers: int, k: int, verify: Callable[[int], float], verify_target: float,
                  max_verifications: int, tried: dict[int, float], at_zero: float | None) -> SearchOutcome:
    """The search's end: verify(k) on the real model, stepping k forward on a miss (at most
    max_verifications calls; the result is the last prefix verified)."""
    verified: float | None = None
    verifications = 0
    for attempt in range(1, max_verifications + 1):
        verified = verify(k)
        verifications += 1
        if verified >= verify_target or k >= num_layers or attempt == max_verifications:
            break
        k = min(num_layers, k + verification_step(num_layers))
    simulated = tried.get(k, at_zero if k == 0 else None)
    return SearchOutcome(num_float=k, simulated=simulated, verified=verified,
                         met=verified is not None and verified >= verify_target, tried=tried,
                         verifications=verifications)


def latency_order(layers: list[str], damage: Mapping[str, float], cost_ms: Mapping[str, float],
                  base: list[str]) -> list[str]:
    """The order of a latency-aware target search: the search keeps `base` (layers measured to
    make the model faster in float) and a prefix of this order in float. Layers not in base, by
    mAP damage per millisecond of float cost on the runtime (accuracy gained per ms lost),
    highest first (a cost at or below ~0 counts as COST_FLOOR_MS); a layer with no damage goes
    last, cheapest first."""
    def key(n: str) -> tuple[int, float]:
        d, c = damage.get(n, 0.0), max(cost_ms.get(n, 0.0), COST_FLOOR_MS)
        return (0, -d / c) if d > 0 else (1, c)

    in_base = set(base)
    return sorted((n for n in layers if n not in in_base), key=key)


def base_candidates(cost_ms: Mapping[str, float], min_saving_ms: float = MIN_SAVING_MS,
                    limit: int = MAX_BASE_CANDIDATES) -> list[str]:
    """Layers the per-node profile says save at least min_saving_ms in float, most saving first."""
    return sorted((n for n, c in cost_ms.items() if c <= -min_saving_ms), key=lambda n: cost_ms[n])[:limit]


def fastest_verified(latency_ms: Mapping[str, float], current: str | None,
                     verify: Callable[[str], bool]) -> str | None:
    """The model the analysis returns: of the candidates timed in the same alternated rounds
    (name -> median ms), the fastest verified to meet the target on the held-out images.
    `current` was verified already (None: it missed the target); a candidate faster than the
    choice so far is verified (verify(name) -> met), fastest first, and taken when it meets
    the target; a slower one is never verified. None when no candidate meets the target."""
    for name in sorted(latency_ms, key=latency_ms.get):
        if name == current:
            return current
        if verify(name):
            return name
    return current
