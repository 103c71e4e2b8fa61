"""The memory constraints of the ILP (ilp.py states them), and the smallest feasible budget.

Rows are scaled by a reference size (the budget, or an upper bound on the peak when the budget is
the unknown), so coefficients stay near 1. Each row is sparse: the chains S, A_t, G_t carry the
prefix sums, so a row holds only the outputs live at its step and the copies on its input edges.

Repeated layers (merge.py) dominate each other. When layers 1 .. L-2 are periodic (node p of
layer i has the same owner, pick and memory vectors as node p of layer 1, and the same live set,
input edges and last use, shifted by whole layers), then the memory of step p of layer i is
affine in i for every plan x (it adds one layer's saved activations and removes one layer's
gradients per layer): M_i(x) = M_1(x) + (i - 1) D(x). So M_i <= max(M_1, M_{L-2}), and the rows of
layers 2 .. L-3 are implied by those of layers 1 and L-2: they are left out, exactly. (Layers 0 and
L-1 differ from the others: the first reads the embeddings, the last ends tensors shared by all.)
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from autopar.solver.memory import MemoryModel


def _chain(ilp, steps, terms_at, keep, name: str, edges_at=lambda t: ()) -> dict[int, object]:
    """Chain variables V_t = V_prev + (terms of the steps since prev), defined at the kept steps, in ``steps`` order."""
    from autopar.solver.ilp import Expr

    prob, out, prev = ilp.prob, {}, None
    acc = Expr()
    for t in steps:
        for k, vec in terms_at(t):
            ilp.node_terms(k, vec, acc)
        for e, mat in edges_at(t):
            ilp.edge_terms(e, mat, acc)
        if t in keep:
            var = prob.add_variable(0, None)
            terms = [(var, 1.0)] + ([(prev, -1.0)] if prev is not None else []) + [(v, -c) for v, c in ilp.terms(acc)]
            prob.add_row(terms, acc.const, acc.const)
            out[t], prev, acc = var, var, Expr()
    return out


def interior_steps(red, mm: MemoryModel) -> set[int]:
    """Steps of layers 2 .. L-3 whose rows are implied (module docstring), or none when not periodic."""
    starts, length = red.starts, red.length
    if len(starts) < 5:
        return set()
    first, end = starts[0], starts[-1] + length
    dst_edges = defaultdict(list)
    for e, t, _ in mm.copies:
        dst_edges[t].append(mm.sg.edges[e].src)
    for e, t, _ in mm.kept_copies:  # a saved copy marks its edge again
        dst_edges[t].append(mm.sg.edges[e].src)
    index = {v: k for k, v in enumerate(mm.sg.nodes)}

    def shift(u: int, layer: int):  # a node as seen from a layer: relative layer and position, or itself
        return ((u - first) // length - layer, (u - first) % length) if first <= u < end else ("out", u)

    def signature(layer: int, p: int):
        t = starts[layer] + p
        views = tuple((shift(r, layer), vec.tobytes()) for r, vec in mm.saved_views[t])
        return (red.owner[t], red.pick[t].tobytes(), mm.saved[t].tobytes(), views, mm.out[t].tobytes(),
                mm.grad[t].tobytes(), mm.dout[t].tobytes(), shift(int(mm.last_use[t]), layer),
                tuple(shift(u, layer) for u in mm.live[t]), tuple(shift(index[s], layer) for s in dst_edges[t]))

    for p in range(length):
        ref = signature(1, p)
        if any(signature(i, p) != ref for i in range(2, len(starts) - 1)):
            return set()
    return {starts[i] + p for i in range(2, len(starts) - 2) for p in range(length)}


def _build_rows(ilp, mm: MemoryModel, keep_f: np.ndarray, keep_b: np.ndarray, scale: float,
                bound: float | None, bound_var: int | None = None) -> int:
    """Add a row ``M(step) <= bound`` (bound: 1, or the variable ``bound_var``) for every kept step; returns the
    row count."""
    n = len(mm.names)
    kept = set(np.flatnonzero(keep_f | keep_b).tolist())
    if not kept:
        return 0
    from autopar.solver.ilp import Expr

    prob = ilp.prob
    static = Expr()
    static.const = mm.resident_extra / scale  # offload's fetched chunks (solver/offload.py)
    for k in range(n):
        ilp.node_terms(k, (mm.param[k] + mm.opt[k]) / scale, static)
    s_var = prob.add_variable(0, None)
    prob.add_row([(s_var, 1.0)] + [(v, -c) for v, c in ilp.terms(static)], static.const, static.const)
    kept_copies = defaultdict(list)
    for e, t, mat in mm.kept_copies:
        kept_copies[t].append((e, mat / scale))
    acts = _chain(ilp, range(n), lambda t: [(k, vec / scale) for k, vec in mm.saved_terms(t)], kept, "A",
                  kept_copies.__getitem__)
    by_use = defaultdict(list)
    for p in range(n):
        if mm.grad[p].any():
            by_use[int(mm.last_use[p])].append(p)
    grads = _chain(ilp, range(n - 1, -1, -1), lambda t: [(p, mm.grad[p] / scale) for p in by_use[t]],
                   set(np.flatnonzero(keep_b).tolist()), "G")
    copies = defaultdict(list)
    for e, t, mat in mm.copies:
        copies[t].append((e, mat / scale))
    rhs_var = bound_var
    rows = 0
    for t in sorted(kept):
        for phase, keep, outs in (("f", keep_f, mm.out), ("b", keep_b, mm.dout)):
            if not keep[t]:
                continue
            row = Expr()
            for u in mm.live[t]:
                ilp.node_terms(u, outs[u] / scale, row)
            for e, mat in copies[t]:
                ilp.edge_terms(e, mat, row)
            const = row.const + (mm.backward_extra / scale if phase == "b" else 0.0)
            terms = [(s_var, 1.0), (acts[t], 1.0)] + ([(grads[t], 1.0)] if phase == "b" else [])
            terms += ilp.terms(row)
            if rhs_var is not None:
                terms.append((rhs_var, -1.0))
                prob.add_row(terms, -math.inf, -const)
            else:
                prob.add_row(terms, -math.inf, float(bound) - const)
            rows += 1
    return rows


def _keep(red, mm: MemoryModel, ub_f, ub_b, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps that need a row: could exceed ``level``, not dominated by their backward row or by other layers."""
    interior = np.zeros(len(mm.names), dtype=bool)
    interior[list(interior_steps(red, mm))] = True
    return mm.forward_needed & (ub_f > level) & ~interior, (ub_b > level) & ~interior


def add_memory_rows(ilp, mm: MemoryModel, budget: float) -> int:
    """Rows for the steps that could exceed ``budget`` (exact: the others never bind)."""
    ub_f, ub_b = mm.step_bounds(upper=True)
    keep_f, keep_b = _keep(ilp.red, mm, ub_f, ub_b, budget)
    return _build_rows(ilp, mm, keep_f, keep_b, budget, 1.0)


def min_budget(sg, red, mm: MemoryModel, backend, restrict, values: list | None = None) -> tuple[float, str]:
    """(the smallest budget any plan of the reduced ILP fits in, a note): min M s.t. every row <= M.

    ``values``, when given, receives the owners' chosen strategies of the plan found (``_Ilp.values``;
    nothing when the search found none): the plan needing least memory."""
    from autopar.solver.ilp import _Ilp, run_solver

    lower = mm.bound(upper=False)
    ub_f, ub_b = mm.step_bounds(upper=True)
    scale = max(float(ub_f.max(initial=0.0)), float(ub_b.max(initial=0.0)), 1.0)
    ilp = _Ilp(sg, red, restrict)
    m_var = ilp.prob.add_variable(0, None)
    keep_f, keep_b = _keep(red, mm, ub_f, ub_b, lower)
    rows = _build_rows(ilp, mm, keep_f, keep_b, scale, None, m_var)
    if rows == 0 or not ilp.x:
        if values is not None:
            values.append({o: 0 for o in ilp.x})
        return math.ceil(lower * (1 + 1e-6)), "(with liveness; every plan has the same peak)"
    ilp.prob.set_objective([(m_var, 1.0)])
    status = run_solver(ilp.prob, backend)
    if status not in (1, 2) or ilp.prob.value is None:
        return math.ceil(lower), "(with liveness; a lower bound: the search for the exact value found none)"
    if values is not None:
        values.append(ilp.values())
    value = max(ilp.prob.val(m_var) * scale, lower)
    note = "(with liveness)" if status == 1 else "(with liveness; an upper bound: the time limit stopped the search)"
    return math.ceil(value * (1 + 1e-6)), note
