"""solve: pick one Strategy per node, minimising the predicted step time under a memory budget.

The ILP is posed on a ``Reduction`` (merge.py): owners carry variables, every other node
follows its owner through ``pick`` (``choice[k] = pick[k][x_owner(k)]``), so each node's cost
and memory is a vector over its owner's strategies, and repeated layers share owners.

Variables (PuLP):

    x_o[i] in {0, 1}      owner o runs strategy i                   (owners with >= 2 strategies)
    e_uv[a, b] in [0, 1]  owner u's strategy is in row group a and owner v's in column group b, for
                          the edges between them (groups: the spec u's output takes, the spec v
                          wants; edges with the same owners and groups share one e)
    f_uv[r] >= 0          instead of e, on an edge with many groups: the flow on arc r of the spec graph
                          (flow.py: exact, same LP bound, one variable per arc instead of per pair)
    S, A_t, G_t >= 0      memory chains (bytes / budget): state, saved activations, gradients

Objective (seconds, in microseconds for the solver's tolerances):

    min  sum_k c_k[pick_k] . x_owner(k)  +  sum_edges sum_ab R[a, b] e[a, b]

with c_k the node's compute + own comm time and R the edge's resharding time (forward +
backward, shape consistency manager). An edge with one end fixed is linear in the other end's
x; with both ends on one owner it is a vector over that owner's strategies.

Constraints:

    one-hot      sum_i x_o[i] = 1                                       every owner o
    marginals    sum_b e[a, b] = sum_{i in a} x_u[i],  sum_a e[a, b] = sum_{j in b} x_v[j]
                 (local-polytope linearisation of the product: with x binary, e is the outer product)
    chains       S = sum_p (param_p + opt_p);  A_t = A_t' + sum_{t' < v <= t} (saved_v + K_v);
                 G_t = G_t' + sum_{t <= c(p) < t'} grad_p         (t' the previous kept step)
    memory       S + A_t + sum_{u in L(t)} out_u + C_t <= budget               forward step t
                 S + A_t + G_t + sum_{u in L(t)} dout_u + C_t <= budget        backward step t

one memory row per step of the linearised schedule (memory.py), except rows that can never
bind, which is exact: forward rows dominated by their backward row (memory.py, Dominance), and
rows whose largest possible value (every term at its maximum) is within the budget. If no row
can exceed the budget, there are none. C_t and K_v (the resharded copies of parameters v saves)
are linear in the e's of the edges into t and v.

Solving: the model is built as arrays (lp.py) and HiGHS first solves its LP relaxation; when that optimum
is integral it is proven optimal (gap 0) without a branch-and-bound, else the MIP runs. One thread, a fixed
seed, variables in creation order: the same problem gives the same plan. A search the time limit stops
reports its proven gap (IlpStats.gap: (objective - dual bound) / objective).

Infeasible budget: when even the per-step minima exceed it, or the solver proves it infeasible,
the smallest budget is found by the same ILP with the budget as a variable M and objective min M,
and InfeasibleBudgetError states it. HiGHS by default, CBC as fallback, always with a time limit;
``prob.sol_status`` 2 (a time limit stopped the search) gives the status "feasible (time limit)".

Time limit without any plan: the smallest-budget problem (min M) is solved instead (any one-hot
choice is feasible for it, so its search finds plans at once); when the plan it finds fits the budget,
that plan is returned with the status "feasible (time limit; the plan needing least memory)": a
budget that some plan fits never ends in a time-out error.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import numpy as np

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.solver.build import StrategyGraph
from autopar.solver.flow import Flow, add_flow, d_var, spec_flow, split_matrix
from autopar.solver.lp import Model
from autopar.solver.memory import MemoryModel
from autopar.solver.merge import Reduction, reduce
from autopar.solver.plan import ShardingPlan, plan_from_choice
from autopar.solver.quiet import quiet_stdout

US = 1e6  # objective in microseconds
# an edge with more (row group, column group) pairs is posed as a flow. Below, the product form stays: its LP
# is tighter under a binding budget (GPT-2 tiny on 2x2 at 90 %: 3.7 s with e-variables, 8 s as flows), and
# small edges gain little (3-D meshes' large edges have 10^4 - 10^5 pairs and 10x fewer arcs)
FLOW_MIN = 1024
STATUS = {1: "optimal", 2: "feasible (time limit)", 0: "no solution found", -1: "infeasible", -2: "unbounded"}
Restrict = Callable[[object, object], bool]  # (node, strategy) -> allowed


def _solver(name: str, time_limit: float):
    """(backend, its name): HiGHS (highspy; its options) unless asked for CBC (a PuLP solver) or HiGHS is missing.

    HiGHS runs on one thread with a fixed seed, on a model whose variables are in creation order (lp.py):
    the same problem gives the same plan every run. Only a search stopped by the time limit can differ."""
    if name.lower() == "highs":
        try:
            import highspy  # noqa: F401
            return {"time_limit": float(time_limit), "mip_rel_gap": 1e-6, "threads": 1, "random_seed": 0}, "HiGHS"
        except ImportError:
            pass
    elif name.lower() != "cbc":
        raise ValueError(f"unknown solver {name!r}; use 'highs' or 'cbc'")
    import pulp

    with warnings.catch_warnings():  # PuLP 3.3 warns that PULP_CBC_CMD moves in 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=1e-6), "CBC"


def proven_gap(prob: Model, objective: float) -> tuple[float, float]:
    """(relative gap, dual bound) the solver proved for the solve just run: ``(objective - bound) / objective``;
    (0, objective) when optimal, when the solver does not say (CBC) or when the objective is 0; (inf, 0) when
    a time limit stopped the search without a bound."""
    if prob.sol_status == 1 or objective <= 0:
        return 0.0, objective
    if prob.bound is None:
        return float("inf"), 0.0
    return max(0.0, (objective - prob.bound) / objective), prob.bound


def run_solver(prob: Model, backend) -> int:
    """Solve with the C-level stdout silenced (highspy prints a banner even with output off); sol_status."""
    with quiet_stdout():
        return prob.solve_highs(backend) if isinstance(backend, dict) else prob.solve_pulp(backend)


class Expr:
    """A linear expression being built: vectors over owners' x, matrices over e-variables, a constant."""

    def __init__(self) -> None:
        self.vec: dict[int, np.ndarray] = {}
        self.mat: dict[tuple, np.ndarray] = {}
        self.const = 0.0


class _Ilp:
    """The variables and linear expressions of one reduced problem (expressions as {var: coef} dicts)."""

    def __init__(self, sg: StrategyGraph, red: Reduction, restrict: Restrict | None, flows: bool = True) -> None:
        self.sg, self.red, self.use_flows = sg, red, flows
        self.prob = Model("autopar_sharding")
        self.index = {v: k for k, v in enumerate(sg.nodes)}
        self.x: dict[int, list] = {}
        for o in red.owners():
            n = len(sg.nodes[o].meta["strategies"])
            self.x[o] = [self.prob.add_variable(0, 1, binary=True) for i in range(n)]
            self.prob.add_row([(v, 1) for v in self.x[o]], 1, 1)
        self.e: dict[tuple, list] = {}  # e-variables by (owner u, owner v, row groups, column groups)
        self.flows: dict[tuple, Flow | None] = {}  # flow layouts (flow.py) by the same key + (shape, itemsize)
        self._edges: dict[int, tuple] = {}
        if restrict is not None:
            self._restrict(restrict)
        self._forbid()

    def _forbid(self) -> None:
        """Pairs of strategies that cannot run together (``Edge.forbidden``) are excluded: their e-variable,
        or the x of a strategy whose partner is fixed, is bounded to 0 (exact for binary x: with x_u[i] =
        x_v[j] = 1 the marginals force e[group(i), group(j)] = 1)."""
        for t, edge in enumerate(self.sg.edges):
            if edge.forbidden is None:
                continue
            if t not in self._edges:
                self._edges[t] = self._edge_layout(t)
            kind, a, b, key = self._edges[t]
            if kind == "const":
                if edge.forbidden[a, b]:
                    raise AutoparError(f"internal: %{edge.dst.name} needs %{edge.src.name}, a tuple, in another spec "
                                       f"than it is made in, and neither has another strategy; please report this")
            elif kind == "vec":
                for var, bad in zip(self.x[key], np.broadcast_to(edge.forbidden[a, b], (len(self.x[key]),))):
                    if bad:
                        self.prob.ub[var] = 0
            else:
                sub = edge.forbidden[np.ix_(a, b)]
                for i, j in zip(*np.nonzero(sub)):
                    self.prob.ub[self.e[key][i][j]] = 0

    def _restrict(self, allowed: Restrict) -> None:
        """Forbid (x = 0) owner strategies under which some member node runs a disallowed strategy."""
        masks: dict[int, np.ndarray] = {o: np.ones(len(xs), dtype=bool) for o, xs in self.x.items()}
        for k, (o, pick) in enumerate(zip(self.red.owner, self.red.pick)):
            if o is None:
                continue
            node = self.sg.nodes[k]
            ok = np.array([allowed(node, s) for s in node.meta["strategies"]])
            if ok.any():
                masks[o] &= ok[pick]
        for o, mask in masks.items():
            if mask.any():
                for var, keep in zip(self.x[o], mask):
                    if not keep:
                        self.prob.ub[var] = 0

    def node_terms(self, k: int, vec: np.ndarray, into: Expr) -> None:
        """Add ``vec[choice[k]]`` to ``into``."""
        o, pick = self.red.owner[k], self.red.pick[k]
        if o is None:
            into.const += float(vec[pick[0]])
        elif o in into.vec:
            into.vec[o] = into.vec[o] + vec[pick]
        else:
            into.vec[o] = vec[pick].astype(float)

    def edge_terms(self, t: int, mat: np.ndarray, into: Expr) -> None:
        """Add ``mat[src group, dst group]`` of edge t (a matrix over the edge's spec groups) to ``into``."""
        if t not in self._edges:
            self._edges[t] = self._edge_layout(t)
        kind, a, b, key = self._edges[t]
        if kind == "const":
            into.const += float(mat[a, b])
        elif kind == "vec":
            o, vec = key, mat[a, b]
            into.vec[o] = into.vec[o] + vec if o in into.vec else vec.astype(float)
        elif kind == "mat":
            sub = mat[np.ix_(a, b)]
            into.mat[key] = into.mat[key] + sub if key in into.mat else sub.astype(float)
        else:
            self._flow_terms(t, mat, a, b, key, into)

    def _flow_terms(self, t: int, mat: np.ndarray, rows: np.ndarray, cols: np.ndarray, key: tuple,
                    into: Expr) -> None:
        """``mat`` of edge t on its flow layout: arc costs, or copies as Y - d (flow.py)."""
        flow, edge = self.flows[key], self.sg.edges[t]
        kind, how = split_matrix(mat, edge.spec_cost)
        ou, ov = key[0], key[1]
        if kind == "cost":
            coef = how * flow.cost
            into.mat[key] = into.mat[key] + coef if key in into.mat else coef
        elif kind == "copy":
            vec = how[cols]
            into.vec[ov] = into.vec[ov] + vec if ov in into.vec else vec.astype(float)
            acc = into.mat.setdefault(("d",) + key, {})
            made = set(flow.row_node[np.unique(rows)].tolist())
            for g in np.unique(cols):
                node = flow.col_node[g]
                if how[g] and node in made:
                    d = d_var(self.prob, flow, int(node), self.x[ou], rows, self.x[ov], cols)
                    acc[d] = acc.get(d, 0.0) - float(how[g])
        else:
            raise AutoparError(f"internal: a matrix on the edge %{edge.src.name} -> %{edge.dst.name} is neither its "
                               f"resharding cost nor its copies; please report this")

    def _edge_layout(self, t: int):
        """How edge t's matrix enters: a constant, a vector over one owner, or e-variables (key)."""
        edge = self.sg.edges[t]
        u, v = self.index[edge.src], self.index[edge.dst]
        ou, ov = self.red.owner[u], self.red.owner[v]
        rows, cols = edge.src_group[self.red.pick[u]], edge.dst_group[self.red.pick[v]]
        if ou is None and ov is None:
            return "const", rows[0], cols[0], None
        if ou is None:
            return "vec", rows[0], cols, ov
        if ov is None:
            return "vec", rows, cols[0], ou
        if ou == ov:
            return "vec", rows, cols, ou
        ra, ca = np.unique(rows), np.unique(cols)
        key = (ou, ov, rows.tobytes(), cols.tobytes())
        if key not in self.e and self.use_flows and edge.forbidden is None and not edge.bucketed \
                and self.sg.reshard is not None \
                and len(ra) * len(ca) > FLOW_MIN:
            fkey = key + self._shape_key(edge)
            if fkey not in self.flows:
                self.flows[fkey] = self._flow(edge, ou, ov, rows, cols, ra, ca)
            if self.flows[fkey] is not None:
                return "flow", rows, cols, fkey
        if key not in self.e:
            self.e[key] = self._evars(ou, ov, rows, cols, ra, ca)
        return "mat", ra, ca, key

    @staticmethod
    def _shape_key(edge) -> tuple:
        from autopar.solver.build import _edge_meta
        from autopar.solver.cost_model import itemsize

        tm, _ = _edge_meta(edge.src, edge.dst)
        return tuple(int(n) for n in tm.shape), itemsize(tm.dtype)

    def _flow(self, edge, ou, ov, rows, cols, ra, ca) -> Flow | None:
        """The flow layout of an edge (flow.py) when it has fewer variables than the product form."""
        shape, size = self._shape_key(edge)
        outs = {int(edge.src_group[i]): s.output for i, s in enumerate(edge.src.meta["strategies"])}
        wants = {int(edge.dst_group[j]): s.inputs[edge.index] for j, s in enumerate(edge.dst.meta["strategies"])}
        row_specs, col_specs = {int(g): outs[int(g)] for g in ra}, {int(g): wants[int(g)] for g in ca}
        if any(s is None for s in col_specs.values()):
            return None
        memo = (shape, size, tuple(row_specs.items()), tuple(col_specs.items()))
        if memo not in self.sg.flow_graphs:
            self.sg.flow_graphs[memo] = spec_flow(0, self.sg.reshard, shape, size, row_specs, col_specs)
        graph = self.sg.flow_graphs[memo]
        if graph is None or graph.size() >= len(ra) * len(ca):
            return None
        flow = dataclasses.replace(graph, tag=len(self.flows), arc_vars=[], d_vars={}, members=None)
        add_flow(self.prob, flow, self.x[ou], rows, self.x[ov], cols)
        return flow

    def terms(self, expr: Expr) -> list:
        """The (variable, coefficient) pairs of ``expr`` (its constant apart)."""
        out = []
        for o, vec in expr.vec.items():
            out += [(x, float(c)) for x, c in zip(self.x[o], vec) if c]
        for key, sub in expr.mat.items():
            if key[0] == "d":  # d-variables of a flow: {variable: coefficient}
                out += [(d, c) for d, c in sub.items() if c]
            elif key in self.flows:
                out += [(f, float(c)) for f, c in zip(self.flows[key].arc_vars, sub) if c]
            else:
                e = self.e[key]
                out += [(e[a][b], float(sub[a, b])) for a, b in zip(*np.nonzero(sub))]
        return out

    def _evars(self, ou, ov, rows, cols, ra, ca):
        e = [self.prob.add_variables(len(ca), 0, 1) for a in range(len(ra))]
        for a, g in enumerate(ra):  # sum_b e[a, b] = sum_{i in a} x_u[i]
            group = [(x, -1) for x, r in zip(self.x[ou], rows) if r == g]
            self.prob.add_row([(y, 1) for y in e[a]] + group, 0, 0)
        for b, g in enumerate(ca):  # sum_a e[a, b] = sum_{j in b} x_v[j]
            group = [(x, -1) for x, c in zip(self.x[ov], cols) if c == g]
            self.prob.add_row([(e[a][b], 1) for a in range(len(ra))] + group, 0, 0)
        return e

    def values(self) -> dict[int, int]:
        return {o: int(np.argmax([self.prob.val(v) for v in xs])) for o, xs in self.x.items()}

    def num_variables(self) -> int:
        flows = sum(len(f.arc_vars) + len(f.d_vars) for f in self.flows.values() if f is not None)
        return sum(len(xs) for xs in self.x.values()) + sum(len(e) * len(e[0]) for e in self.e.values()) + flows


def solve(strategy_graph: StrategyGraph, cluster: ClusterInfo, *, memory_budget: float | None = None,
          time_limit: float = 60, solver: str = "highs", optimizer: str = "adamw", merge: bool = True,
          share: bool = True, restrict: Restrict | None = None, memory: MemoryModel | None = None,
          reduction: Reduction | None = None, flows: bool = True) -> ShardingPlan:
    """The cheapest plan under ``memory_budget`` bytes per device (default: the device memory; ``inf``:
    no budget). Returns the plan; writes nothing into the graph.

    ``optimizer`` sets the optimizer state in the memory model (adamw, adam, sgd_momentum, sgd);
    ``merge``/``share`` switch the ILP reductions; ``restrict(node, strategy) -> bool`` limits the
    candidates (hand plans: bench/plan_quality.py). ``memory``/``reduction``: the MemoryModel and
    Reduction of ``strategy_graph``, when the caller solves it several times.
    """
    from autopar.solver.memory_rows import add_memory_rows, min_budget
    from autopar.solver.plan import IlpStats

    start = time.perf_counter()
    budget = float(cluster.memory_per_device if memory_budget is None else memory_budget)
    sg = strategy_graph
    memory = memory if memory is not None else MemoryModel(sg, optimizer)
    red = reduction if reduction is not None else reduce(sg, merge=merge, share=share)
    backend, backend_name = _solver(solver, time_limit)
    if memory.bound(upper=False) > budget * (1 + 1e-9):
        smallest, note = min_budget(sg, red, memory, backend, restrict)
        raise InfeasibleBudgetError(budget, smallest, detail=note)
    ilp = _Ilp(sg, red, restrict, flows)
    objective = Expr()
    for k, v in enumerate(sg.nodes):
        ilp.node_terms(k, np.array([s.compute_time + s.comm_time for s in v.meta["strategies"]]) * US, objective)
    for t, edge in enumerate(sg.edges):
        ilp.edge_terms(t, edge.spec_cost * US, objective)
    for k, seconds in memory.host_time:  # offload's host link and host optimizer step (solver/offload.py)
        ilp.node_terms(k, seconds * US, objective)
    rows = add_memory_rows(ilp, memory, budget)
    ilp.prob.set_objective(ilp.terms(objective), objective.const)
    status = run_solver(ilp.prob, backend) if ilp.x else 1
    label = STATUS.get(status, str(status))
    values = ilp.values()
    if status not in (1, 2):
        found: list = []
        smallest, note = min_budget(sg, red, memory, backend, restrict, found)
        if status == -1 or smallest > budget * (1 + 1e-6) and "upper bound" not in note:
            raise InfeasibleBudgetError(budget, smallest, detail=note)
        if not found or memory.peak(red.choice(found[0])).peak > budget * (1 + 1e-9):
            raise AutoparError(f"{backend_name} found no plan within time_limit={time_limit} s at the budget of "
                               f"{budget:.0f} bytes (status {label}), nor one that fits by the smallest-budget "
                               f"search; raise time_limit or the memory budget")
        values, status = found[0], 2
        label = "feasible (time limit; the plan needing least memory)"
    choice = red.choice(values)
    objective_us = ilp.prob.objective_value if ilp.x else 0.0
    gap, bound = proven_gap(ilp.prob, objective_us) if ilp.x and status in (1, 2) else (0.0, objective_us)
    stats = IlpStats(nodes=len(sg.nodes), owners=len(ilp.x), merged=red.merged, tied=red.tied, repeats=red.repeats,
                     variables=ilp.num_variables(), memory_rows=rows, constraints=ilp.prob.numConstraints(),
                     sol_status=status, optimizer=memory.optimizer,
                     objective=objective_us / US, gap=gap if status == 2 else 0.0, bound=bound / US)
    return plan_from_choice(sg, cluster, choice, memory.peak(choice), budget, backend_name, label,
                            time.perf_counter() - start, stats)
