"""solver/flow.py: large edges posed as flows over the spec graph give the product form's optimum."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from autopar import ClusterInfo, zoo
from autopar.solver.build import build_strategies
from autopar.solver.flow import spec_flow, split_matrix
from autopar.solver.ilp import solve
from autopar.tracer import trace
from tests.solver.conftest import traced_mlp

# 1-D, 2-D and 3-D meshes; a binding budget where the product form proves it quickly (Llama's takes minutes)
CASES = [("gpt2", "cpu:4", True), ("llama", "cpu:2x2", False), ("mlp", "cpu:2x2x2", True)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def graph(request):
    name, preset, budget = request.param
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if name == "mlp":
        gm = traced_mlp(16, 64, loss=True)
    else:
        model, inputs = zoo.build(name, "tiny", device="meta")
        gm = trace(model, inputs)
    cluster = ClusterInfo.preset(preset)
    return build_strategies(gm, cluster), cluster, budget


def _same(a, b) -> bool:
    return abs(a.step_time - b.step_time) <= 1e-9 * a.step_time + max(a.stats.gap, b.stats.gap) * a.step_time


def test_flows_keep_the_optimum_with_and_without_a_budget(graph):
    sg, cluster, budget = graph
    free = solve(sg, cluster, memory_budget=float("inf"), flows=False)
    fast = solve(sg, cluster, memory_budget=float("inf"))
    assert fast.stats.variables <= free.stats.variables  # the flows are smaller (none on small edges)
    assert _same(free, fast)
    if not budget:
        return
    lean_budget = 0.9 * free.peak_memory  # binds: the fastest plan no longer fits
    old = solve(sg, cluster, memory_budget=lean_budget, flows=False)
    new = solve(sg, cluster, memory_budget=lean_budget)
    assert _same(old, new) and new.peak_memory <= lean_budget * (1 + 1e-9)


def test_a_flow_prices_every_pair_as_the_shortest_resharding():
    from autopar.runtime.shape_consistency import ShapeConsistencyManager

    cluster = ClusterInfo.preset("2x2x2xH100")
    sg = build_strategies(traced_mlp(16, 64), cluster)
    scm = sg.reshard
    assert isinstance(scm, ShapeConsistencyManager)
    edge = max(sg.edges, key=lambda e: e.spec_cost.size)
    outs = {int(edge.src_group[i]): s.output for i, s in enumerate(edge.src.meta["strategies"])}
    wants = {int(edge.dst_group[j]): s.inputs[edge.index] for j, s in enumerate(edge.dst.meta["strategies"])}
    shape = tuple(edge.src.meta["tensor"].shape)
    flow = spec_flow(0, scm, shape, 4, outs, wants)
    assert flow is not None and flow.size() < edge.spec_cost.size
    # the cheapest path in the flow's graph between every pair is the edge's price
    n = int(max(flow.heads.max(), flow.tails.max())) + 1
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    for h, t, c in zip(flow.heads, flow.tails, flow.cost):
        dist[h, t] = min(dist[h, t], c)
    for k in range(n):
        dist = np.minimum(dist, dist[:, k:k + 1] + dist[k:k + 1, :])
    priced = dist[np.ix_(flow.row_node, flow.col_node)]
    assert np.allclose(priced, edge.spec_cost, rtol=1e-12)


def test_matrices_on_a_flow_are_costs_or_copies():
    cost = np.array([[0.0, 2.0], [3.0, 0.0]])
    assert split_matrix(5 * cost, cost) == ("cost", 5.0)
    kind, w = split_matrix(np.array([[0.0, 7.0], [4.0, 0.0]]), cost)
    assert kind == "copy" and list(w) == [4.0, 7.0]
    assert split_matrix(np.array([[1.0, 7.0], [4.0, 0.0]]), cost)[0] == "other"
