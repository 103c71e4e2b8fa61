"""The checkpoint DP is exact on chains: it matches a brute force over every schedule."""
import itertools
import math
import random

import pytest

from autopar.errors import InfeasibleBudgetError
from autopar.solver.checkpoint_dp import Chain, chen_schedule, evaluate, min_peak, no_checkpoint, plan_chain


def random_chain(rng: random.Random, n: int) -> Chain:
    # integer sizes and times keep every sum exact, so "equal" means equal
    return Chain(forward=tuple(float(rng.randint(1, 20)) for _ in range(n)),
                 saved=tuple(float(rng.randint(1, 50)) for _ in range(n)),
                 inputs=tuple(float(rng.randint(1, 10)) for _ in range(n)),
                 transient=tuple(float(rng.randint(0, 15)) for _ in range(n)))


def all_schedules(n: int):
    """Every subset of cut points between stages, times every subset of segments recomputed."""
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        segs = list(zip(bounds[:-1], bounds[1:]))
        for flags in itertools.product((False, True), repeat=len(segs)):
            yield [(a, b - 1, r) for (a, b), r in zip(segs, flags)]


def brute_force(chain: Chain, budget: float) -> float:
    best = math.inf
    for segments in all_schedules(len(chain)):
        schedule = evaluate(chain, segments)
        if schedule.peak <= budget:
            best = min(best, schedule.extra_time)
    return best


@pytest.mark.parametrize("n", list(range(1, 11)) + [12])
def test_dp_equals_brute_force_on_random_chains(n):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    chain = random_chain(rng, n)
    lowest, highest = min_peak(chain), no_checkpoint(chain).peak
    budgets = {lowest, highest} | {rng.uniform(lowest, highest) for _ in range(3 if n < 12 else 1)}
    for budget in sorted(budgets):
        schedule = plan_chain(chain, budget)
        assert schedule.peak <= budget
        assert schedule.extra_time == brute_force(chain, budget), f"seed {seed}, n {n}, budget {budget}"
        assert evaluate(chain, schedule.segments) == schedule


def test_min_peak_is_the_smallest_peak_of_any_schedule():
    rng = random.Random(7)
    for n in (1, 3, 6, 8):
        chain = random_chain(rng, n)
        assert min_peak(chain) == min(evaluate(chain, s).peak for s in all_schedules(n))


def test_a_budget_below_every_schedule_states_the_smallest_feasible_one():
    chain = random_chain(random.Random(3), 6)
    with pytest.raises(InfeasibleBudgetError) as info:
        plan_chain(chain, min_peak(chain) - 1)
    assert info.value.min_budget == min_peak(chain)
    plan_chain(chain, info.value.min_budget)  # and that budget is feasible


def test_never_slower_than_chen_at_its_budget_and_free_when_everything_fits():
    rng = random.Random(11)
    for n in (4, 9, 16, 30):
        chain = random_chain(rng, n)
        chen = chen_schedule(chain)
        assert plan_chain(chain, chen.peak).extra_time <= chen.extra_time
        assert plan_chain(chain, no_checkpoint(chain).peak).extra_time == 0


def with_shared(rng: random.Random, chain: Chain, m: int = 3) -> Chain:
    """``chain`` plus m shared storages (a mask, tables, ids): each made in some stage or an input,
    read by some later stages, saved by some of the stages reading it."""
    n = len(chain)
    born = tuple(rng.randint(-1, n - 1) for _ in range(m))
    reads, holds = [0] * n, [0] * n
    for r, b in enumerate(born):
        for i in range(b + 1, n):
            if rng.random() < 0.6:
                reads[i] |= 1 << r
                if rng.random() < 0.5:
                    holds[i] |= 1 << r
        if b >= 0 and rng.random() < 0.5:
            holds[b] |= 1 << r
    shared = tuple(float(rng.randint(1, 30)) for _ in range(m))
    return Chain(chain.forward, chain.saved, chain.inputs, chain.transient, shared, tuple(holds), tuple(reads), born)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9])
def test_dp_equals_brute_force_with_shared_storages(n):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    chain = with_shared(rng, random_chain(rng, n))
    lowest, highest = min_peak(chain), no_checkpoint(chain).peak
    assert lowest == min(evaluate(chain, s).peak for s in all_schedules(n)), f"seed {seed}"
    for budget in sorted({lowest, highest, rng.uniform(lowest, highest)}):
        schedule = plan_chain(chain, budget)
        assert schedule.peak <= budget
        assert schedule.extra_time == brute_force(chain, budget), f"seed {seed}, n {n}, budget {budget}"


def test_a_shared_storage_is_kept_once_however_many_regions_read_it():
    # three stages reading one 10-byte mask made before them: recomputing all keeps their inputs and it, once
    chain = Chain((1.0,) * 3, (50.0,) * 3, (4.0,) * 3, (0.0,) * 3, (10.0,), (1, 1, 1), (1, 1, 1), (-1,))
    each = evaluate(chain, [(0, 0, True), (1, 1, True), (2, 2, True)])
    assert each.retained == 3 * 4 + 10
    kept = no_checkpoint(chain)
    assert kept.retained == 3 * 50 + 10
