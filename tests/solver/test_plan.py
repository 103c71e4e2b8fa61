"""ShardingPlan: report, JSON and save/load."""
from __future__ import annotations

import json

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
    assert abs(plan.step_time - (plan.compute_time + plan.comm_time)) < 1e-12


def test_save_load_round_trip(tmp_path, gpt2_gm):
    plan = _gpt2_plan(gpt2_gm)
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = ShardingPlan.load(path)
    assert loaded == plan
    assert loaded.to_json() == plan.to_json()
    for row in plan.rows:
        assert loaded.strategy_of(row.name) == row.strategy
