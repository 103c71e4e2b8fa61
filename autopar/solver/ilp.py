"""solve: pick one Strategy per node, minimising the predicted step time under a memory budget.

Variables (PuLP):

    s_v[i] in {0, 1}     node v runs strategy i        (only for nodes with >= 2 strategies)
    e_uv[a, b] in [0, 1] producer u outputs its a-th distinct spec and consumer v wants its b-th
                         distinct spec for u (only for edges with a non-zero resharding matrix and
                         >= 2 strategies at each end). Costs depend only on this pair of specs, so
                         grouping the strategies by spec is exact and keeps the ILP small.

Objective (seconds, scaled to microseconds for the solver's tolerances):

    min  sum_v sum_i (compute_v[i] + comm_v[i]) s_v[i]  +  sum_(u,v) sum_ab R_uv[a, b] e_uv[a, b]

where R_uv is the edge's resharding matrix over distinct specs (forward + backward, from the shape consistency
manager). An edge with a single strategy at one end is linear in the other end's s; with one at
both ends it is a constant.

Constraints:

    one-hot      sum_i s_v[i] = 1                                for every node v
    marginals    sum_b e_uv[a, b] = sum_{i in group a} s_u[i],
                 sum_a e_uv[a, b] = sum_{j in group b} s_v[j]      for every edge
                 (the local-polytope linearisation of the product of the two one-hot group
                 indicators: with s binary, e is forced to the outer product, so e stays continuous)
    memory       sum_v sum_i memory_v[i] s_v[i] <= budget        (a simple peak: every parameter
                 state and every saved activation held at once; liveness comes later)

The smallest feasible budget is the sum of each node's smallest memory (the memory row is the
only coupling constraint), so an infeasible budget raises InfeasibleBudgetError with that number
before any solve. HiGHS by default, CBC when HiGHS is missing; ``prob.sol_status`` is recorded
(2 = feasible but stopped by the time limit before proving optimality).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pulp

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.solver.build import StrategyGraph
from autopar.solver.plan import Fallback, PlanRow, ShardingPlan
from autopar.solver.strategies import op_key
from autopar.solver.strategy import Strategy
from autopar.tracer.meta import TensorMeta

US = 1e6  # objective in microseconds
_STATUS = {1: "optimal", 2: "feasible (not proven optimal)", 0: "no solution found", -1: "infeasible",
           -2: "unbounded"}


def _solver(name: str, time_limit: float):
    """(PuLP solver, its name): HiGHS (highspy) unless asked for CBC or HiGHS is missing."""
    if name.lower() == "highs":
        highs = pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=1e-6)
        if highs.available():
            return highs, "HiGHS"
    elif name.lower() != "cbc":
        raise ValueError(f"unknown solver {name!r}; use 'highs' or 'cbc'")
    with warnings.catch_warnings():  # PuLP 3.3 warns that PULP_CBC_CMD moves in 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=1e-6), "CBC"


def solve(strategy_graph: StrategyGraph, cluster: ClusterInfo, *, memory_budget: float | None = None,
          time_limit: float = 60, solver: str = "highs") -> ShardingPlan:
    """The cheapest plan under ``memory_budget`` bytes per device (default: the device memory)."""
    start = time.perf_counter()
    budget = float(cluster.memory_per_device if memory_budget is None else memory_budget)
    nodes = strategy_graph.nodes
    strats = [n.meta["strategies"] for n in nodes]
    cost = [np.array([s.compute_time + s.comm_time for s in ss]) * US for ss in strats]
    mem = [np.array([s.memory for s in ss]) for ss in strats]
    min_budget = float(sum(m.min() for m in mem))
    if min_budget > budget:
        raise InfeasibleBudgetError(budget, min_budget, detail=f"({len(nodes)} nodes; per-node minima)")

    prob = pulp.LpProblem("autopar_sharding", pulp.LpMinimize)
    index = {n: k for k, n in enumerate(nodes)}
    svars: dict[int, list] = {}
    objective: list = []
    constant = 0.0
    for k, ss in enumerate(strats):
        if len(ss) == 1:
            constant += cost[k][0]
            continue
        svars[k] = [prob.add_variable(f"s{k}_{i}", 0, 1, cat=pulp.LpBinary) for i in range(len(ss))]
        prob += pulp.LpAffineExpression([(v, 1) for v in svars[k]]) == 1, f"onehot{k}"
        objective += [(v, c) for v, c in zip(svars[k], cost[k]) if c]

    for t, edge in enumerate(strategy_graph.edges):
        u, v = index[edge.src], index[edge.dst]
        if u not in svars or v not in svars:
            r = edge.cost * US
            if u not in svars and v not in svars:
                constant += r[0, 0]
            elif v not in svars:
                objective += [(x, c) for x, c in zip(svars[u], r[:, 0]) if c]
            else:
                objective += [(x, c) for x, c in zip(svars[v], r[0, :]) if c]
        else:
            objective += _edge_terms(prob, t, svars[u], svars[v], edge)

    if any(np.ptp(m) > 0 for m in mem):  # the budget can only bind when some choice changes memory
        row = [(x, m / budget) for k, xs in svars.items() for x, m in zip(xs, mem[k]) if m]
        fixed = sum(float(mem[k][0]) for k in range(len(nodes)) if k not in svars)
        prob += pulp.LpAffineExpression(row) <= 1 - fixed / budget, "memory"
    prob += pulp.LpAffineExpression(objective, constant=constant)

    backend, backend_name = _solver(solver, time_limit)
    if svars:
        prob.solve(backend)
        status = prob.sol_status
    else:
        status = 1
    if status not in (1, 2):
        if status == -1:
            raise InfeasibleBudgetError(budget, min_budget, detail=f"(solver {backend_name} found none)")
        raise AutoparError(f"{backend_name} found no plan within time_limit={time_limit} s "
                           f"(status {_STATUS.get(status, status)}); raise time_limit or the memory budget")
    choice = [int(np.argmax([x.varValue or 0.0 for x in svars[k]])) if k in svars else 0 for k in range(len(nodes))]
    return _plan(strategy_graph, cluster, choice, budget, backend_name, _STATUS.get(status, str(status)),
                 time.perf_counter() - start)


def _edge_terms(prob: pulp.LpProblem, t: int, su: list, sv: list, edge) -> list:
    """Add e_uv over the edge's spec groups with its marginal constraints; return its objective terms."""
    r = edge.spec_cost * US
    na, nb = r.shape
    e = [[prob.add_variable(f"e{t}_{a}_{b}", 0, 1) for b in range(nb)] for a in range(na)]
    for a in range(na):  # sum_b e[a, b] = sum_{i in a} s_u[i]
        group = [(x, -1) for x, g in zip(su, edge.src_group) if g == a]
        prob += pulp.LpAffineExpression([(y, 1) for y in e[a]] + group) == 0, f"mu{t}_{a}"
    for b in range(nb):  # sum_a e[a, b] = sum_{j in b} s_v[j]
        group = [(x, -1) for x, g in zip(sv, edge.dst_group) if g == b]
        prob += pulp.LpAffineExpression([(e[a][b], 1) for a in range(na)] + group) == 0, f"mv{t}_{b}"
    return [(e[a][b], r[a, b]) for a in range(na) for b in range(nb) if r[a, b]]


def _plan(sg: StrategyGraph, cluster: ClusterInfo, choice: list[int], budget: float, solver: str, status: str,
          solve_time: float) -> ShardingPlan:
    """Write ``node.meta["strategy"]`` and collect the frozen plan."""
    index = {n: k for k, n in enumerate(sg.nodes)}
    reshard = [0.0] * len(sg.nodes)
    for edge in sg.edges:
        reshard[index[edge.dst]] += float(edge.cost[choice[index[edge.src]], choice[index[edge.dst]]])
    rows, fallbacks = [], []
    for k, node in enumerate(sg.nodes):
        chosen: Strategy = node.meta["strategies"][choice[k]]
        node.meta["strategy"] = chosen
        source = node.meta.get("source", "") or ""
        rows.append(PlanRow(node.name, op_key(node), _shape(node.meta.get("tensor")), chosen, chosen.compute_time,
                            chosen.comm_time + reshard[k], chosen.memory, source))
        if node.meta.get("fallback"):
            fallbacks.append(Fallback(node.name, op_key(node), source))
    return ShardingPlan(cluster=cluster.describe(), mesh_shape=tuple(cluster.mesh_shape), rows=tuple(rows),
                        step_time=sum(r.compute_time + r.comm_time for r in rows),
                        peak_memory=sum(r.memory for r in rows), memory_budget=budget, solver=solver, status=status,
                        solve_time=solve_time, fallbacks=tuple(fallbacks))


def _shape(tm):
    if isinstance(tm, TensorMeta):
        return tuple(tm.shape)
    if isinstance(tm, tuple):
        return tuple(tuple(t.shape) if t is not None else None for t in tm)
    return None
