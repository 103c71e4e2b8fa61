"""ShardingPlan: report, JSON and save/load."""
from __future__ import annotations

import json

import pytest

from autopar import ClusterInfo
from autopar.solver.build import build_strategies
from autopar.solver.ilp import solve
from autopar.solver.plan import ShardingPlan
from tests.solver.conftest import traced_mlp

CPU2x2 = ClusterInfo.preset("cpu:2x2")


def _gpt2_plan(gm):
    return solve(build_strategies(gm, ClusterInfo.preset("cpu:4")), ClusterInfo.preset("cpu:4"))


def test_report_and_json_list_every_node(gpt2_gm):
    plan = _gpt2_plan(gpt2_gm)
    names = [n.name for n in gpt2_gm.graph.nodes]
    text = plan.report()
    lines = text.splitlines()
    for name in names:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "total" in text and "HiGHS" in text
    data = plan.to_json()
    assert [r["name"] for r in data["rows"]] == names
    json.dumps(data)  # plain JSON
    if plan.fallbacks:
        assert "without a sharding rule" in text
        assert all(f"%{f.name} ({f.op})" in text for f in plan.fallbacks)


def test_report_reads_like_the_strategies():
    plan = solve(build_strategies(traced_mlp(8, 64), CPU2x2), CPU2x2)
    row = plan.row("linear")
    assert str(row.strategy) in plan.report()
    assert plan.to_json()["rows"][[r.name for r in plan.rows].index("linear")]["strategy"] == str(row.strategy)



def test_step_time_is_the_solvers_objective(gpt2_gm):
    # the plan's rows are priced from the chosen strategies and edges; the ILP's objective is priced
    # from its variables and merged/tied owners: the two must agree
    for plan in (_gpt2_plan(gpt2_gm), solve(build_strategies(traced_mlp(8, 64), CPU2x2), CPU2x2)):
        assert plan.stats.objective > 0
        assert plan.step_time == pytest.approx(plan.stats.objective, rel=1e-6)


def test_json_round_trip(gpt2_gm):
    plan = _gpt2_plan(gpt2_gm)
    loaded = ShardingPlan.from_json(json.loads(json.dumps(plan.to_json(), allow_nan=False)))
    assert loaded == plan
    assert loaded.to_json() == plan.to_json()
    for row in plan.rows:
        assert loaded.strategy_of(row.name) == row.strategy
