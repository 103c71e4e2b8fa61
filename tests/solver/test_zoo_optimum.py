"""The reduced planner keeps the exact ILP's optimum across the zoo (issue 14): on the zoo's tiny models and
1-D, 2-D and 3-D meshes, the ILP with trivial ops merged, repeated layers sharing variables and large edges
posed as flows reaches the predicted step time of the plain ILP (every node its own variables, every edge
its product form), with no memory budget, where sharing is exact (test_merge.py: under a binding budget
the shared optimum may be above the unshared one)."""
from __future__ import annotations

import pytest

from autopar import ClusterInfo, zoo
from autopar.solver.build import build_strategies
from autopar.solver.ilp import solve
from autopar.tracer import trace

CASES = [(model, mesh) for model in ("gpt2", "llama", "bert", "t5", "vit") for mesh in ("cpu:4", "cpu:2x2")]
CASES += [("gpt2", "cpu:2x2x2"), ("llama", "cpu:2x2x2")]


@pytest.mark.parametrize("model, mesh", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_the_reduced_ilp_reaches_the_exact_optimum(model, mesh):
    net, inputs = zoo.build(model, "tiny", device="meta")
    cluster = ClusterInfo.preset(mesh)
    sg = build_strategies(trace(net, inputs), cluster)
    exact = solve(sg, cluster, memory_budget=float("inf"), merge=False, share=False, flows=False, time_limit=600)
    reduced = solve(sg, cluster, memory_budget=float("inf"))
    assert exact.status == reduced.status == "optimal"
    assert reduced.stats.variables < exact.stats.variables
    assert reduced.step_time == pytest.approx(exact.step_time, rel=1e-6)
