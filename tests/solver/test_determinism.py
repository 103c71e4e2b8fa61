"""The ILP is deterministic (one HiGHS thread, a fixed seed, variables in creation order), and a search
stopped by the time limit says how far from optimal it may be (the proven gap)."""
from __future__ import annotations

import dataclasses
import logging

from autopar import ClusterInfo, zoo
from autopar.solver import ilp
from autopar.solver.build import build_strategies
from autopar.solver.lp import Model
from autopar.tracer import trace


def test_mixtral_on_a_3d_mesh_plans_the_same_twice_and_proves_it_optimal():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model, inputs = zoo.build("mixtral", "tiny", device="meta")
    cluster = ClusterInfo.preset("2x2x2xH100")
    sg = build_strategies(trace(model, inputs), cluster)
    first, second = (ilp.solve(sg, cluster) for _ in range(2))
    assert [str(r.strategy) for r in first.rows] == [str(r.strategy) for r in second.rows]
    assert first.step_time == second.step_time and first.status == "optimal" and first.stats.gap == 0.0


def test_a_time_limited_plan_reports_its_proven_gap():
    prob = Model("p")
    prob.sol_status, prob.bound = 2, 90.0
    assert ilp.proven_gap(prob, 100.0) == (0.1, 90.0)
    prob.bound = None  # stopped before any bound: the gap is unknown
    assert ilp.proven_gap(prob, 100.0)[0] == float("inf")
    prob.sol_status = 1
    assert ilp.proven_gap(prob, 100.0) == (0.0, 100.0)


def test_the_report_shows_the_gap_of_a_time_limited_plan(monkeypatch, gpt2_gm):
    cluster = ClusterInfo.preset("cpu:2x2")
    sg = build_strategies(gpt2_gm, cluster)
    plan = ilp.solve(sg, cluster)
    assert plan.stats.gap == 0.0 and "gap" not in plan.report().splitlines()[1]
    stopped = dataclasses.replace(plan, status="feasible (time limit)",
                                  stats=dataclasses.replace(plan.stats, sol_status=2, gap=0.0042))
    assert "proven gap 0.42 %" in stopped.report().splitlines()[1]
