"""Which stages of a chain recompute their activations: an exact dynamic program, and Chen's schedule.

The chain model (all numbers per device, for one training step):

    stage i:  f[i]  forward time (what recomputing it costs)
              s[i]  bytes it saves for backward when it runs normally (shared storages aside)
              x[i]  bytes of its input, the tensor a checkpoint keeps instead
              t[i]  transient bytes while it runs forward or backward (outputs, gradients)

plus *shared* storages r (bytes c[r]) that tensors without gradient put in several stages'
way: a mask, rotary tables, token ids. A stage *holds* the shared storages it saves (H[i]) and
*reads* those made before it (made in stage born[r], -1 for a model input). Each is kept at
most once, however many stages hold or read it; S is the set kept so far and c(.) the bytes.

A schedule cuts the chain into consecutive segments, each either *kept* (its stages save
their activations as usual) or *recomputed* (one non-reentrant checkpoint region: it keeps
only its inputs in forward, x[a] and the shared storages I = {r read in a..b : born[r] < a},
and re-runs its forward just before its backward). With R(j) the bytes retained by the
stages before j after forward (c(S) included),

    kept stage j:              peak_j = R(j) + s[j] + c(H[j] - S) + t[j]
                               it retains s[j] + c(H[j] - S)
    recomputed segment a..b:   peak   = R(a) + x[a] + c(I - S) + sum s[a..b] + c(H[a..b] - S - I)
                                        + max t[a..b]
                               it retains x[a] + c(I - S); extra time sum f[a..b]

and the schedule's peak is the largest of these (forward peaks are never above them); R(n), the
bytes held for backward when forward ends, is what ``runtime.saved_probe`` measures.
``plan_chain`` minimises the extra time subject to peak <= budget exactly, with a dynamic
program over segment boundaries that keeps, at each boundary and for each set S, the Pareto
frontier of (retained bytes, extra time) among prefixes whose peak fits: a prefix with more
retained bytes, the same S and no less time can never lead to a better schedule. ``min_peak``
is the smallest peak any schedule reaches. Chen et al.'s sqrt(n) schedule (segments of
~sqrt(n) stages, all recomputed) is a member of the same space, so the DP is never slower at
its budget. Sets are bitmasks over the shared storages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autopar.errors import InfeasibleBudgetError


@dataclass(frozen=True, slots=True)
class Chain:
    forward: tuple[float, ...]  # f: s per stage
    saved: tuple[float, ...]  # s: bytes saved for backward, shared storages aside
    inputs: tuple[float, ...]  # x: bytes of the stage's input (what a checkpoint keeps)
    transient: tuple[float, ...]  # t: bytes live only while the stage runs
    shared: tuple[float, ...] = ()  # c: bytes of each shared storage
    holds: tuple[int, ...] = ()  # H: per stage, bitmask of the shared storages it saves
    reads: tuple[int, ...] = ()  # per stage, bitmask of the shared storages it reads, made before it
    born: tuple[int, ...] = ()  # per shared storage, the stage that makes it (-1: a model input)
    fixed: tuple[bool, ...] = ()  # per stage: it must run once (it updates state), never in a recomputed segment

    def __post_init__(self) -> None:
        n = len(self.forward)
        if not (len(self.saved) == len(self.inputs) == len(self.transient) == n):
            raise ValueError("a Chain needs the same number of forward times, saved, input and transient bytes")
        if self.shared and not (len(self.holds) == len(self.reads) == n and len(self.born) == len(self.shared)):
            raise ValueError("a Chain with shared storages needs holds and reads per stage and born per storage")
        if self.fixed and len(self.fixed) != n:
            raise ValueError("a Chain's fixed flags need one per stage")

    def recomputable(self, i: int) -> bool:
        return not (self.fixed and self.fixed[i])

    def __len__(self) -> int:
        return len(self.forward)

    def made_before(self, a: int) -> int:
        """Bitmask of the shared storages made before stage ``a``."""
        return sum(1 << r for r, b in enumerate(self.born) if b < a)

    def bytes_of(self, mask: int) -> float:
        return sum(c for r, c in enumerate(self.shared) if mask >> r & 1) if mask else 0.0


@dataclass(frozen=True, slots=True)
class Schedule:
    segments: tuple[tuple[int, int, bool], ...]  # (first stage, last stage, recomputed?)
    extra_time: float  # s: forward time recomputed in backward
    peak: float  # bytes
    retained: float = 0.0  # bytes held for backward at the end of forward: R(n)

    def __str__(self) -> str:
        parts = [f"[{a}..{b}]" if r else f"{a}..{b}" for a, b, r in self.segments]
        return " ".join(parts) + "  ([..] recomputed)"


def _kept_step(chain: Chain, j: int, kept: int):
    """A kept stage j given the shared set ``kept``: (peak above R, bytes it retains, new set)."""
    if not chain.shared:
        return chain.saved[j] + chain.transient[j], chain.saved[j], kept
    new = chain.holds[j] & ~kept
    retains = chain.saved[j] + chain.bytes_of(new)
    return retains + chain.transient[j], retains, kept | new


def _recomputed_steps(chain: Chain, a: int, kept: int):
    """Every recomputed segment a..end-1 given ``kept``: (end, peak above R, retains, time, new set)."""
    before = chain.made_before(a) if chain.shared else 0
    saved = time = worst_t = 0.0
    reads = holds = 0
    new_inputs = inner = 0.0
    x = chain.inputs[a]
    for end in range(a + 1, len(chain) + 1):
        if not chain.recomputable(end - 1):  # a stage that updates state runs once: the segment ends before it
            return
        saved += chain.saved[end - 1]
        time += chain.forward[end - 1]
        worst_t = max(worst_t, chain.transient[end - 1])
        if chain.shared:
            reads |= chain.reads[end - 1] & before
            holds |= chain.holds[end - 1]
            new_inputs = chain.bytes_of(reads & ~kept)
            inner = chain.bytes_of(holds & ~kept & ~reads)
        yield end, x + new_inputs + saved + inner + worst_t, x + new_inputs, time, kept | reads


def _recomputed(chain: Chain, a: int, b: int, kept: int):
    """The recomputed segment a..b alone: (peak above R, retains, time, new set); as ``_recomputed_steps``."""
    retains, inner, reads = chain.inputs[a], 0.0, 0
    if chain.shared:
        holds = 0
        for i in range(a, b + 1):
            reads, holds = reads | chain.reads[i], holds | chain.holds[i]
        reads &= chain.made_before(a)
        retains += chain.bytes_of(reads & ~kept)
        inner = chain.bytes_of(holds & ~kept & ~reads)
    above = retains + sum(chain.saved[a:b + 1]) + inner + max(chain.transient[a:b + 1])
    return above, retains, sum(chain.forward[a:b + 1]), kept | reads


def evaluate(chain: Chain, segments) -> Schedule:
    """Extra time and peak of a schedule given as (first, last, recomputed) segments covering the chain."""
    retained = peak = extra = 0.0
    kept = 0
    for a, b, recomputed in segments:
        if recomputed:
            above, retains, time, kept = _recomputed(chain, a, b, kept)
            peak = max(peak, retained + above)
            retained += retains
            extra += time
        else:
            for j in range(a, b + 1):
                above, retains, kept = _kept_step(chain, j, kept)
                peak = max(peak, retained + above)
                retained += retains
    return Schedule(tuple(segments), extra, peak, retained)


def _segments(chain: Chain, k: int, kept: int):
    """Every segment that can start at boundary k: (end, recomputed?, peak above R, retains, time, new set)."""
    above, retains, new_kept = _kept_step(chain, k, kept)
    yield k + 1, False, above, retains, 0.0, new_kept
    for end, above, retains, time, new_kept in _recomputed_steps(chain, k, kept):
        yield end, True, above, retains, time, new_kept


def plan_chain(chain: Chain, budget: float) -> Schedule:
    """The schedule of least extra time whose peak fits ``budget`` (raises with the smallest budget if none)."""
    n = len(chain)
    # frontier[k]: {(retained, shared set): (extra time, peak, back-pointer)} for prefixes ending at boundary k
    frontier: list[dict[tuple[float, int], tuple[float, float, tuple | None]]] = [dict() for _ in range(n + 1)]
    frontier[0][(0.0, 0)] = (0.0, 0.0, None)
    for k in range(n):
        for (retained, kept), (time, peak, _) in _pareto(frontier[k]):
            for end, recomputed, above, retains, cost, new_kept in _segments(chain, k, kept):
                new_peak = max(peak, retained + above)
                if new_peak > budget:
                    continue
                key = (retained + retains, new_kept)
                best = frontier[end].get(key)
                if best is None or (time + cost, new_peak) < best[:2]:
                    frontier[end][key] = (time + cost, new_peak, (k, (retained, kept), recomputed))
    if not frontier[n]:
        raise InfeasibleBudgetError(budget, min_peak(chain), detail="(activation checkpointing cannot reach it)")
    key = min(frontier[n], key=lambda s: frontier[n][s][:2])
    return _keep_useless(chain, _walk_back(frontier, n, key))


def _keep_useless(chain: Chain, segments) -> Schedule:
    """A recomputed segment that saves no more than it keeps is kept instead when that retains no more
    and peaks no higher (ties the DP may pick, e.g. mask-building stages); kept stages read as one."""
    best = evaluate(chain, _merge_kept(segments))
    for i, (a, b, recomputed) in enumerate(segments):
        if recomputed and sum(chain.saved[a:b + 1]) <= chain.inputs[a]:
            trial = segments[:i] + [(a, b, False)] + segments[i + 1:]
            schedule = evaluate(chain, _merge_kept(trial))
            if schedule.peak <= best.peak and schedule.retained <= best.retained:
                segments, best = trial, schedule
    return best


def _pareto(states: dict) -> list:
    """States not dominated by one with the same shared set, no more retained bytes and no more time."""
    out, best_time = [], {}
    for key in sorted(states):
        retained, kept = key
        time = states[key][0]
        if time < best_time.get(kept, math.inf):
            out.append((key, states[key]))
            best_time[kept] = time
    return out


def _walk_back(frontier, end: int, key) -> list[tuple[int, int, bool]]:
    segments = []
    while end > 0:
        k, prev_key, recomputed = frontier[end][key][2]
        if recomputed:
            segments.append((k, end - 1, True))
        else:
            segments.append((k, k, False))
        end, key = k, prev_key
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
    """The smallest peak of any schedule (a DP over (retained, shared set) -> least peak so far)."""
    n = len(chain)
    frontier: list[dict[tuple[float, int], float]] = [dict() for _ in range(n + 1)]
    frontier[0][(0.0, 0)] = 0.0
    for k in range(n):
        for (retained, kept), peak in frontier[k].items():
            for end, _r, above, retains, _cost, new_kept in _segments(chain, k, kept):
                key, new_peak = (retained + retains, new_kept), max(peak, retained + above)
                if new_peak < frontier[end].get(key, math.inf):
                    frontier[end][key] = new_peak
    return min(frontier[n].values())


def chen_schedule(chain: Chain) -> Schedule:
    """Chen et al. (2016): segments of ceil(sqrt(n)) stages, every segment recomputed (cut around the
    stages that must run once, which are kept)."""
    n = len(chain)
    k = max(1, math.ceil(math.sqrt(n)))
    segments: list[tuple[int, int, bool]] = []
    for a in range(0, n, k):
        start = a
        for i in range(a, min(a + k, n)):
            if not chain.recomputable(i):
                if start < i:
                    segments.append((start, i - 1, True))
                segments.append((i, i, False))
                start = i + 1
        if start < min(a + k, n):
            segments.append((start, min(a + k, n) - 1, True))
    return evaluate(chain, segments)


def no_checkpoint(chain: Chain) -> Schedule:
    return evaluate(chain, [(0, len(chain) - 1, False)])
