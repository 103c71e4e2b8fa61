"""A large edge's resharding as a flow over the spec graph: exact, and far smaller than the product.

The shape consistency manager prices a resharding a -> b as the shortest path from a to b in the graph
G of specs whose arcs are single CommSteps (arc cost c_r: the step's forward + backward seconds). For an
edge from owner u (row groups: the spec a its output takes) to owner v (column groups: the spec b it
wants), with X_s = sum_{i: a(i) = s} x_u[i] and Y_s = sum_{j: b(j) = s} x_v[j]:

    R(x) = min  sum_r c_r f_r
           s.t. sum_{r out of s} f_r - sum_{r into s} f_r = X_s - Y_s       every spec s of G
                f >= 0

For binary x this is R[a, b] (one unit from a to b along a shortest path). For fractional x it is the
transport cost between X and Y under the ground cost R, which is also what the product linearisation
(e-variables with marginals, ilp.py) gives: a flow decomposes into paths, none cheaper than R, and a
coupling routes along shortest paths. So the ILP's optimum and its LP bound are unchanged, with one
variable per arc of G (specs reachable from u's and reaching v's) instead of one per (a, b) pair.

Memory rows price "the copy made when the specs differ", ``M[a, b] = w_b`` for a != b and 0 for a = b:

    sum_b w_b (Y_b - d_b),   0 <= d_s <= X_s,  d_s <= Y_s,
                             out_s >= X_s - d_s,  in_s >= Y_s - d_s   (s a spec both ends can take)

With x binary d_s = 0 unless a = b = s, where d_s = 1 is allowed (it lowers every memory row and costs
nothing), so the rows admit exactly the plans the product form admits. The last two rows (what does not
stay at s travels) are implied for binary x and tighten the LP, as the product form's diagonal e[s, s]
does: without them a budgeted solve branched several times longer. Other matrices keep e-variables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Flow:
    """The flow variables of one edge layout: arcs of the spec graph, then one d per common spec."""

    tag: int  # the layout's number in the ILP
    heads: np.ndarray  # arc -> node it leaves
    tails: np.ndarray  # arc -> node it enters
    cost: np.ndarray  # arc -> seconds
    row_node: np.ndarray  # row group -> node (the spec it makes); -1 for groups u's owner never takes
    col_node: np.ndarray  # column group -> node (the spec it wants); -1 likewise
    arc_vars: list = field(default_factory=list)
    d_vars: dict = field(default_factory=dict)  # node -> d variable (made when a memory row needs it)
    members: tuple | None = None  # (node -> x of u making it, node -> x of v wanting it), for the d rows

    def size(self) -> int:
        return len(self.heads) + len(set(self.row_node[self.row_node >= 0]) & set(self.col_node[self.col_node >= 0]))


def spec_flow(tag: int, manager, shape: tuple, itemsize: int, row_specs: dict, col_specs: dict) -> Flow | None:
    """The flow layout of an edge whose row groups make ``row_specs`` ({group: spec}) and whose column
    groups want ``col_specs``, on ``manager``'s spec graph for ``shape``; None when a wanted spec is
    unreachable (the product form then says why)."""
    order, arcs = manager.graph(row_specs.values(), shape, itemsize)  # every spec a resharding can pass through
    nodes = {spec: i for i, spec in enumerate(order)}
    if any(s not in nodes for s in col_specs.values()):
        return None
    useful = _reaching(len(order), arcs, [nodes[s] for s in col_specs.values()])
    arcs = [a for a in arcs if useful[a[0]] and useful[a[1]]]
    keep = np.flatnonzero(useful)
    renum = -np.ones(len(order), dtype=int)
    renum[keep] = np.arange(len(keep))
    arr = np.array(arcs, dtype=float).reshape(-1, 3)
    n_rows, n_cols = max(row_specs) + 1, max(col_specs) + 1
    row_node, col_node = -np.ones(n_rows, dtype=int), -np.ones(n_cols, dtype=int)
    for g, s in row_specs.items():
        row_node[g] = renum[nodes[s]]
    for g, s in col_specs.items():
        col_node[g] = renum[nodes[s]]
    return Flow(tag, renum[arr[:, 0].astype(int)], renum[arr[:, 1].astype(int)], arr[:, 2], row_node, col_node)


def _reaching(n: int, arcs, targets) -> np.ndarray:
    """Which nodes reach some target (every node of ``arcs`` is reached from a source)."""
    into: list[list[int]] = [[] for _ in range(n)]
    for a, b, _ in arcs:
        into[b].append(a)
    seen = np.zeros(n, dtype=bool)
    stack = list(targets)
    seen[stack] = True
    while stack:
        for a in into[stack.pop()]:
            if not seen[a]:
                seen[a] = True
                stack.append(a)
    return seen


def add_flow(prob, flow: Flow, x_u: list, rows: np.ndarray, x_v: list, cols: np.ndarray) -> None:
    """The arc variables and one conservation row per spec: out - in - X_s + Y_s = 0 (module docstring)."""
    flow.arc_vars = prob.add_variables(len(flow.heads), 0, None)
    arcs = np.array(flow.arc_vars, dtype=np.int64)
    node = np.concatenate([flow.heads, flow.tails, flow.row_node[rows], flow.col_node[cols]])
    var = np.concatenate([arcs, arcs, np.asarray(x_u, dtype=np.int64), np.asarray(x_v, dtype=np.int64)])
    coef = np.concatenate([np.ones(len(arcs)), -np.ones(len(arcs)), -np.ones(len(x_u)), np.ones(len(x_v))])
    order = np.argsort(node, kind="stable")
    node, var, coef = node[order], var[order].tolist(), coef[order].tolist()
    bounds = np.flatnonzero(np.diff(node)) + 1
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(node)]):
        prob.add_row(list(zip(var[a:b], coef[a:b])), 0, 0)


def d_var(prob, flow: Flow, node: int, x_u: list, rows: np.ndarray, x_v: list, cols: np.ndarray) -> int:
    """d_s for spec node s, made on first use with d_s <= X_s and d_s <= Y_s."""
    if node not in flow.d_vars:
        if flow.members is None:  # spec node -> the owners' strategies that make / want it
            flow.members = ({}, {})
            for x, g in zip(x_u, rows):
                flow.members[0].setdefault(int(flow.row_node[g]), []).append(x)
            for x, g in zip(x_v, cols):
                flow.members[1].setdefault(int(flow.col_node[g]), []).append(x)
        d = prob.add_variable(0, 1)
        for side, arcs in zip(flow.members, (flow.heads, flow.tails)):
            members = [(x, -1.0) for x in side.get(node, [])]
            prob.add_row([(d, 1.0)] + members, -np.inf, 0)  # d_s <= X_s (Y_s)
            # what does not stay leaves (arrives) on arcs: out_s >= X_s - d_s, in_s >= Y_s - d_s
            prob.add_row([(flow.arc_vars[r], 1.0) for r in np.flatnonzero(arcs == node)] + [(d, 1.0)] + members,
                         0, np.inf)
        flow.d_vars[node] = d
    return flow.d_vars[node]


def split_matrix(mat: np.ndarray, spec_cost: np.ndarray) -> tuple[str, object]:
    """How a matrix over an edge's spec groups enters a flow: ``("cost", scale)`` when it is ``scale *
    spec_cost``, ``("copy", w)`` when it is ``w_b`` wherever the specs differ; else ``("other", None)``."""
    top = float(spec_cost.max(initial=0.0))
    if top > 0:
        scale = float(mat.max(initial=0.0)) / top
        if np.allclose(mat, scale * spec_cost, rtol=1e-12, atol=0.0):
            return "cost", scale
    w = mat.max(axis=0, initial=0.0)
    if np.array_equal(mat, np.where(spec_cost > 0, w[None, :], 0.0)):
        return "copy", w
    return "other", None
