"""Tier 2: a budget that needs activation checkpointing trains with the single-device numbers.

The budget lies halfway between the smallest budget stage 1 (sharding) can meet alone and the
smallest it can meet with stage 2 (checkpointing), so recomputation is required.
"""
from __future__ import annotations

import copy

import pytest

from tests.distributed import run_distributed
from tests.test_autoparallelize import train_and_compare


def _budget_needing_checkpoints(name: str, cluster) -> float:
    from autopar import zoo
    from autopar.api import _plan_stages
    from autopar.errors import InfeasibleBudgetError
    from autopar.tracer import trace

    gm = trace(*zoo.build(name, "tiny", device="meta"))
    minima = {}
    for mode in ("none", None):
        with pytest.raises(InfeasibleBudgetError) as info:
            _plan_stages(gm, cluster, 1.0, 60, mode)
        minima[mode] = info.value.min_budget
    assert minima[None] < minima["none"], "checkpointing should lower the smallest feasible budget"
    return (minima[None] + minima["none"]) / 2


def check_checkpointed(rank: int, world_size: int, budgets: dict[str, float]) -> list[dict]:
    import autopar
    from autopar import zoo

    results = []
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    for name, budget in budgets.items():
        model, inputs = zoo.build(name, "tiny", device="cpu", seed=0)
        ref = copy.deepcopy(model)
        pm = autopar.autoparallelize(model, cluster, inputs, memory_budget=budget)
        stage2 = pm.checkpoint_plan
        assert stage2 is not None and stage2.regions, f"{name}: the budget needs checkpointing"
        assert "torch.utils.checkpoint.checkpoint" in pm.code
        train_and_compare(ref, pm, inputs, f"{name} checkpointed on 2x2")
        results.append({"model": name, "regions": len(stage2.regions), "report": stage2.report()})
    return results


def test_checkpointed_plans_train_identically_within_budget():
    import autopar
    import autopar.zoo as zoo

    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    budgets = {n: _budget_needing_checkpoints(n, cluster) for n in ("gpt2", "llama") if n in zoo.names()}
    results = run_distributed(check_checkpointed, 4, budgets, timeout=600)
    assert [r["model"] for r in results[0]] == list(budgets)
