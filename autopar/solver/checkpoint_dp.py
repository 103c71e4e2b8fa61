"""Which stages of a chain recompute their activations: an exact dynamic program, and Chen's schedule.

The chain model (all numbers per device, for one training step):

    stage i:  f[i]  forward time (what recomputing it costs)
              s[i]  bytes it saves for backward when it runs normally
              x[i]  bytes of its input, the tensor a checkpoint keeps instead
              t[i]  transient bytes while it runs forward or backward (outputs, gradients)

A schedule cuts the chain into consecutive segments, each either *kept* (its stages save
their activations as usual) or *recomputed* (one non-reentrant checkpoint region: it keeps
only its input x[a] in forward, and re-runs its forward just before its backward). With
R(j) the bytes retained by the stages before j after forward,

    kept stage j:              peak_j = R(j) + s[j] + t[j];       it retains s[j]
    recomputed segment a..b:   peak   = R(a) + x[a] + sum s[a..b] + max t[a..b];
                               it retains x[a]; extra time sum f[a..b]

and the schedule's peak is the largest of these (forward peaks are never above them).
``plan_chain`` minimises the extra time subject to peak <= budget exactly, with a dynamic
program over segment boundaries that keeps, at each boundary, the Pareto frontier of
(retained bytes, extra time) among prefixes whose peak fits: a prefix with more retained
bytes and no less time can never lead to a better schedule. ``min_peak`` is the smallest
peak any schedule reaches. Chen et al.'s sqrt(n) schedule (segments of ~sqrt(n) stages,
all recomputed) is a member of the same space, so the DP is never slower at its budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autopar.errors import InfeasibleBudgetError


@dataclass(frozen=True, slots=True)
class Chain:
    forward: tuple[float, ...]  # f: s per stage
    saved: tuple[float, ...]  # s: bytes saved for backward
    inputs: tuple[float, ...]  # x: bytes of the stage's input (what a checkpoint keeps)
    transient: tuple[float, ...]  # t: bytes live only while the stage runs

    def __post_init__(self) -> None:
        n = len(self.forward)
        if not (len(self.saved) == len(self.inputs) == len(self.transient) == n):
            raise ValueError("a Chain needs the same number of forward times, saved, input and transient bytes")

    def __len__(self) -> int:
        return len(self.forward)


@dataclass(frozen=True, slots=True)
class Schedule:
    segments: tuple[tuple[int, int, bool], ...]  # (first stage, last stage, recomputed?)
    extra_time: float  # s: forward time recomputed in backward
    peak: float  # bytes

    @property
    def recomputed(self) -> tuple[int, ...]:
        return tuple(i for a, b, r in self.segments if r for i in range(a, b + 1))

    def __str__(self) -> str:
        parts = [f"[{a}..{b}]" if r else f"{a}..{b}" for a, b, r in self.segments]
        return " ".join(parts) + "  ([..] recomputed)"


def evaluate(chain: Chain, segments) -> Schedule:
    """Extra time and peak of a schedule given as (first, last, recomputed) segments covering the chain."""
    retained = peak = extra = 0.0
    for a, b, recomputed in segments:
        if recomputed:
            peak = max(peak, retained + chain.inputs[a] + sum(chain.saved[a:b + 1]) + max(chain.transient[a:b + 1]))
            retained += chain.inputs[a]
            extra += sum(chain.forward[a:b + 1])
        else:
            for j in range(a, b + 1):
                peak = max(peak, retained + chain.saved[j] + chain.transient[j])
                retained += chain.saved[j]
    return Schedule(tuple(segments), extra, peak)


def _segments(chain: Chain, k: int):
    """Every segment that can start at boundary k: (end boundary, recomputed?, peak above R, retains, time)."""
    n = len(chain)
    yield k + 1, False, chain.saved[k] + chain.transient[k], chain.saved[k], 0.0
    saved = time = 0.0
    worst_t = 0.0
    for end in range(k + 1, n + 1):
        saved += chain.saved[end - 1]
        time += chain.forward[end - 1]
        worst_t = max(worst_t, chain.transient[end - 1])
        yield end, True, chain.inputs[k] + saved + worst_t, chain.inputs[k], time


def plan_chain(chain: Chain, budget: float) -> Schedule:
    """The schedule of least extra time whose peak fits ``budget`` (raises with the smallest budget if none)."""
    n = len(chain)
    # frontier[k]: {retained: (extra time, peak, back-pointer)} for prefixes ending at boundary k
    frontier: list[dict[float, tuple[float, float, tuple | None]]] = [dict() for _ in range(n + 1)]
    frontier[0][0.0] = (0.0, 0.0, None)
    for k in range(n):
        for retained, (time, peak, _) in _pareto(frontier[k]):
            for end, recomputed, above, retains, cost in _segments(chain, k):
                new_peak = max(peak, retained + above)
                if new_peak > budget:
                    continue
                key = retained + retains
                best = frontier[end].get(key)
                if best is None or (time + cost, new_peak) < best[:2]:
                    frontier[end][key] = (time + cost, new_peak, (k, retained, recomputed))
    if not frontier[n]:
        raise InfeasibleBudgetError(budget, min_peak(chain), detail="(activation checkpointing cannot reach it)")
    retained = min(frontier[n], key=lambda r: frontier[n][r][:2])
    return evaluate(chain, _merge_kept(_keep_useless(chain, _walk_back(frontier, n, retained))))


def _keep_useless(chain: Chain, segments):
    """A recomputed segment that saves no more than its input is kept instead: it then retains no
    more, peaks no higher and costs nothing (ties the DP may pick, e.g. mask-building stages)."""
    return [(a, b, r and sum(chain.saved[a:b + 1]) > chain.inputs[a]) for a, b, r in segments]


def _pareto(states: dict) -> list:
    """States not dominated by one with no more retained bytes and no more time."""
    out, best_time = [], math.inf
    for retained in sorted(states):
        time = states[retained][0]
        if time < best_time:
            out.append((retained, states[retained]))
            best_time = time
    return out


def _walk_back(frontier, end: int, retained: float) -> list[tuple[int, int, bool]]:
    segments = []
    while end > 0:
        k, prev_retained, recomputed = frontier[end][retained][2]
        if recomputed:
            segments.append((k, end - 1, True))
        else:
            segments.append((k, k, False))
        end, retained = k, prev_retained
    return segments[::-1]


def _merge_kept(segments):
    """Adjacent kept stages read as one kept segment (same schedule, shorter to print)."""
    out: list[tuple[int, int, bool]] = []
    for a, b, r in segments:
        if out and not r and not out[-1][2]:
            out[-1] = (out[-1][0], b, False)
        else:
            out.append((a, b, r))
    return out


def min_peak(chain: Chain) -> float:
    """The smallest peak of any schedule (a DP over (retained, peak) Pareto frontiers)."""
    n = len(chain)
    frontier: list[dict[float, float]] = [dict() for _ in range(n + 1)]
    frontier[0][0.0] = 0.0
    for k in range(n):
        for retained, peak in frontier[k].items():
            for end, _r, above, retains, _cost in _segments(chain, k):
                key, new_peak = retained + retains, max(peak, retained + above)
                if new_peak < frontier[end].get(key, math.inf):
                    frontier[end][key] = new_peak
    return min(frontier[n].values())


def chen_schedule(chain: Chain) -> Schedule:
    """Chen et al. (2016): segments of ceil(sqrt(n)) stages, every segment recomputed."""
    n = len(chain)
    k = max(1, math.ceil(math.sqrt(n)))
    return evaluate(chain, [(a, min(a + k, n) - 1, True) for a in range(0, n, k)])


def no_checkpoint(chain: Chain) -> Schedule:
    return evaluate(chain, [(0, len(chain) - 1, False)])
