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
