"""Per-device memory over one training step: a liveness analysis of a linearised schedule.

The schedule is the forward pass in graph order (steps f_1 .. f_N, one per node), then the
backward pass in reverse (b_N .. b_1). With x the chosen strategies, the bytes live on one
device at each step are sums of per-node terms, each a function of one node's strategy (or of
one edge's pair of specs), so every step's memory is linear in the ILP's one-hot variables:

    M(f_t) = S + A_t + sum_{u in L(t)} out_u        + C_t
    M(b_t) = S + A_t + G_t + sum_{u in L(t)} dout_u + C_t

    S      = sum_p (param_p + opt_p)                  parameter and optimizer state, live all step
    A_t    = sum_{v <= t} (saved_v + K_v)             activations saved for backward: saved at f_v,
                                                      freed after b_v (so the same prefix at f_t, b_t)
    G_t    = sum_{p : c(p) >= t} grad_p               a parameter's gradient is allocated at b_c(p)
                                                      (c(p) its last forward user) and kept to the end
    L(t)   = {u : u <= t <= c(u)}                     outputs produced and still needed at step t
                                                      (in backward: gradients of outputs accumulated
                                                      from b_c(u) and freed after b_u, the same set)
    out_u  = local bytes of u's output (0 for views and other aliases, params, scalars)
    dout_u = out_u when u's output needs a gradient, else 0
    C_t    = resharded copies of node t's inputs: sum over input edges (u -> t) of the local bytes
             of the spec t wants when it differs from the spec u produced

``param_p`` and ``grad_p`` are the local bytes of the parameter in its chosen spec (``grad`` 0 for
buffers and frozen parameters); ``opt_p`` is the optimizer state in the same spec, by kind, per
element: ``adamw``/``adam`` two moments, ``sgd_momentum`` one buffer, ``sgd`` none. Moments are
kept in the parameter's dtype for fp32 parameters; for half-precision parameters in fp32 beside
an fp32 master copy (mixed precision): bf16 + AdamW costs 2 + 2 + 12 bytes per element.
``saved_v`` is what v saves on one device (``cost_model.saved_local_bytes``, as stage 2 prices it):
each storage once, for its first saver, so freed after that node's backward (``tracer/saved.py``); a
storage v reaches only through views is priced on its root's strategies (the root's local bytes),
the rest on v's own.
``K_v`` = the copies of parameters that v saves (a linear layer saves its weight to compute
its input's gradient) where the plan reshards them for v: the local bytes of the spec v wants,
on the edges where it differs from the stored spec; likewise the copy of a view through which v
first saves an activation (the lm head reading a slice of the last norm), when resharded. A
parameter is held anyway; its gathered copy is not. (A resharded activation is already in saved_v:
its local bytes are those of v's specs.)

Offload (solver/offload.py, ``with_terms``): with a share of the state on the host, ``param_p``, ``opt_p``
and ``grad_p`` keep the device's share, S gains the chunks an op fetches and every backward step the
gradient chunks being filled (constants), and ``host_time`` prices the host link in the objective.

Dominance: f_t is implied by b_t (same x) when ``dout_u = out_u`` for every u in L(t), since then
``M(b_t) - M(f_t) = G_t >= 0``; such forward steps need no constraint of their own.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from autopar.solver.build import StrategyGraph, _edge_meta
from autopar.solver.cost_model import (
    OPTIMIZERS,
    local_bytes,
    saved_local_bytes,
    saved_signature,
    shape_key,
    state_factors,
    view_saved_roots,
)
from autopar.tracer.meta import is_multi
from autopar.tracer.ops import Prop, has

CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    """Bytes per device at one step of the schedule (the peak): what each category holds there."""

    peak: float
    step: str  # "forward %name", "recompute %name" or "backward %name"
    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    temporaries: float = 0.0

    @property
    def state(self) -> float:
        """Parameter, gradient and optimizer bytes: what activations cannot use."""
        return self.params + self.grads + self.optimizer

    def to_json(self) -> dict:
        return {"peak": self.peak, "step": self.step, **{c: getattr(self, c) for c in CATEGORIES}}

    @classmethod
    def from_json(cls, data: dict) -> MemoryBreakdown:
        return cls(data.get("peak", 0.0), data.get("step", "-"), **{c: data.get(c, 0.0) for c in CATEGORIES})


class MemoryModel:
    """The per-node and per-edge memory terms of a StrategyGraph, and their liveness intervals.

    Vectors are indexed by a node's strategies (``param[k][i]`` bytes when node k runs strategy i);
    ``copies`` holds ``(edge index, step, matrix over the edge's spec groups)``.
    """

    def __init__(self, sg: StrategyGraph, optimizer: str = "adamw") -> None:
        self.sg, self.optimizer = sg, optimizer
        mesh = sg.cluster.mesh_shape
        nodes = sg.nodes
        n = len(nodes)
        index = {v: k for k, v in enumerate(nodes)}
        self.names = [v.name for v in nodes]
        zeros = [np.zeros(len(v.meta["strategies"])) for v in nodes]
        self.param = [z.copy() for z in zeros]
        self.grad = [z.copy() for z in zeros]
        self.opt = [z.copy() for z in zeros]
        self.elems = [z.copy() for z in zeros]  # a trainable parameter's local elements (offload's host step)
        # offload (solver/offload.py): the share on the host, the working sets it adds to every step (params)
        # and to backward steps (gradients), and the host link's seconds per strategy of each parameter
        self.share, self.host = None, None
        self.resident_extra = self.backward_extra = 0.0
        self.host_time: list[tuple[int, np.ndarray]] = []
        self.saved = [z.copy() for z in zeros]
        # saved_views[k]: (root r, bytes per strategy of r) for each storage k first saves through a view of it
        self.saved_views: list[list[tuple[int, np.ndarray]]] = [[] for _ in nodes]
        by_name = {v.name: v for v in nodes}
        self.out = [z.copy() for z in zeros]
        self.needs_grad = np.zeros(n, dtype=bool)
        self.last_use = np.arange(n)
        memo: dict = {}  # repeated layers share Strategy objects (strategies.memoised_strategies): bytes once

        def out_bytes(tm, strategies) -> np.ndarray:
            key = (id(strategies[0]), len(strategies), shape_key(tm))
            if key not in memo:
                memo[key] = np.array([local_bytes(tm, s.output, mesh) for s in strategies])
            return memo[key]

        for k, v in enumerate(nodes):
            users = [index[u] for u in v.users if u in index]
            self.last_use[k] = max(users, default=k)
            strategies = v.meta["strategies"]
            tm = v.meta.get("tensor")
            op = v.meta.get("op")
            if v.op == "get_attr" or op in ("param", "buffer"):
                trainable = op == "param" and getattr(tm, "requires_grad", True)
                fp, fg, fo = state_factors(tm.dtype, optimizer) if trainable else (1.0, 0.0, 0.0)
                elems = out_bytes(tm, strategies) / tm.dtype.itemsize
                self.param[k], self.grad[k], self.opt[k] = fp * elems, fg * elems, fo * elems
                if trainable:
                    self.elems[k] = elems
                continue
            if tm is None or v.op == "output":
                continue
            if v.op != "placeholder":
                key = ("saved", id(strategies[0]), len(strategies), saved_signature(v))
                if key not in memo:  # a repeated layer's node: priced once
                    memo[key] = np.array([saved_local_bytes(v, s.output, s.inputs, mesh, through_views=False)
                                          for s in strategies])
                self.saved[k] = memo[key]
                views = view_saved_roots(v)
                if any(by_name.get(name) not in index for name, _i in views):  # not all planned: estimated
                    self.saved[k], views = np.array([s.memory for s in strategies]), []
                for name, i in views:
                    root = by_name[name]
                    rt = root.meta["tensor"]
                    rt = rt[i] if i is not None and is_multi(rt) else rt
                    self.saved_views[k].append(
                        (index[root], np.array([local_bytes(rt, s.output, mesh) for s in root.meta["strategies"]])))
            if not has(op, Prop.VIEW | Prop.META):  # views and metadata reads hold no new bytes
                self.out[k] = out_bytes(tm, strategies)
            metas = [t for t in tm if t is not None] if isinstance(tm, tuple) and not hasattr(tm, "shape") else [tm]
            self.needs_grad[k] = any(t.requires_grad for t in metas)
        self.copies: list[tuple[int, int, np.ndarray]] = []
        mats: dict[int, np.ndarray] = {}
        graph_nodes = {v.name: v for v in nodes[0].graph.nodes} if nodes else {}
        self.kept_copies: list[tuple[int, int, np.ndarray]] = []  # K: copies of parameters saved for backward
        for e, edge in enumerate(sg.edges):
            tm, whole = _edge_meta(edge.src, edge.dst)
            if tm is None or whole:
                continue
            dst = edge.dst.meta["strategies"]
            key = (id(dst[0]), len(dst), edge.index, shape_key(tm))
            if key not in memo:  # a repeated layer's edge: the same bytes per wanted spec
                wants = {}
                for j, s in enumerate(dst):
                    wants.setdefault(int(edge.dst_group[j]), s.inputs[edge.index])
                memo[key] = np.array([local_bytes(tm, wants[b], mesh) for b in range(edge.spec_cost.shape[1])])
            col = memo[key]
            mat = np.where(edge.spec_cost > 0, col[None, :], 0.0)
            if mat.any():
                self.copies.append((e, index[edge.dst], mat))
                mats[e] = mat
        # Resharded on any edge of the way from a storage's root (through views) to v, what v saves is
        # codegen's copy there: for every parameter or buffer v saves, and every activation v is the first
        # to save through views (stage 2 counts only the copy nearest v, and for an activation the root's
        # term stays on the root's strategies: this account is above stage 2's there, never below).
        edges_into = {(edge.src, edge.dst): e for e, edge in enumerate(sg.edges)}
        for k, v in enumerate(nodes):
            storage = v.meta.get("storage")
            if storage is None or v.op in ("placeholder", "get_attr", "output"):
                continue
            roots = [name for name, _i in storage.saves if graph_nodes.get(name) is not None
                     and graph_nodes[name].op == "get_attr"]
            roots += [nodes[r].name for r, _vec in self.saved_views[k]]
            for name in dict.fromkeys(roots):
                for e in _view_hops(v, name, edges_into):
                    if e in mats:
                        self.kept_copies.append((e, k, mats[e]))
        self.dout = [o if g else np.zeros_like(o) for o, g in zip(self.out, self.needs_grad)]
        # L(t): the nodes whose output (or its gradient) is live at step t
        self.live: list[list[int]] = [[] for _ in range(n)]
        for u in range(n):
            if self.out[u].any():
                for t in range(u, self.last_use[u] + 1):
                    self.live[t].append(u)
        # f_t needs its own constraint only when some live output needs no gradient (see Dominance)
        self.forward_needed = np.array([any(not self.needs_grad[u] for u in self.live[t]) for t in range(n)])
        self.full_param, self.full_grad, self.full_opt = self.param, self.grad, self.opt  # before offload scaling

    def with_terms(self, **terms) -> MemoryModel:
        """A copy of this model with some terms replaced (offload.offloaded: the device's share of the state);
        the rest (activations, liveness, copies) shared."""
        new = copy.copy(self)
        for name, value in terms.items():
            if not hasattr(self, name):
                raise AttributeError(f"MemoryModel has no term {name!r}")
            setattr(new, name, value)
        return new

    def saved_terms(self, t: int) -> list[tuple[int, np.ndarray]]:
        """What step f_t saves for backward, as (node, bytes per strategy of that node) terms."""
        return [(t, self.saved[t]), *self.saved_views[t]]

    # ---- evaluation of one plan ---------------------------------------------------------------
    def profile(self, choice) -> dict[str, np.ndarray]:
        """Bytes per category at every step: arrays of length 2N (forward f_1..f_N, then b_N..b_1)."""
        n = len(self.names)
        pick = [vec[choice[k]] for k, vec in enumerate(self.param)]
        param = sum(pick)
        opt = sum(vec[choice[k]] for k, vec in enumerate(self.opt))
        saved = np.array([vec[choice[k]] + sum(rv[choice[r]] for r, rv in self.saved_views[k])
                          for k, vec in enumerate(self.saved)])
        for e, t, mat in self.kept_copies:
            saved[t] += self._edge_value(e, t, mat, choice)
        saved = np.cumsum(saved)
        grad_at = np.zeros(n)
        for k, vec in enumerate(self.grad):
            grad_at[self.last_use[k]] += vec[choice[k]]
        grads = np.cumsum(grad_at[::-1])[::-1]  # G_t = sum_{c(p) >= t}
        copies = np.zeros(n)
        for e, t, mat in self.copies:
            copies[t] += self._edge_value(e, t, mat, choice)
        temp_f = np.array([sum(self.out[u][choice[u]] for u in self.live[t]) for t in range(n)]) + copies
        temp_b = np.array([sum(self.dout[u][choice[u]] for u in self.live[t]) for t in range(n)]) + copies
        rev = slice(None, None, -1)
        grads = grads + self.backward_extra
        return {"params": np.full(2 * n, param + self.resident_extra),
                "grads": np.concatenate([np.zeros(n), grads[rev]]),
                "optimizer": np.full(2 * n, opt), "activations": np.concatenate([saved, saved[rev]]),
                "temporaries": np.concatenate([temp_f, temp_b[rev]])}

    def _edge_value(self, e: int, t: int, mat: np.ndarray, choice) -> float:
        """``mat``'s entry for edge e's specs under ``choice`` (t: the step it counts at, not always its dst)."""
        edge = self.sg.edges[e]
        return mat[edge.src_group[choice[self._idx(edge.src)]], edge.dst_group[choice[self._idx(edge.dst)]]]

    def _idx(self, node) -> int:
        if not hasattr(self, "_index"):
            self._index = {v: k for k, v in enumerate(self.sg.nodes)}
        return self._index[node]

    def peak(self, choice) -> MemoryBreakdown:
        """The peak over every step of the schedule, with the breakdown at that step."""
        prof = self.profile(choice)
        total = sum(prof.values())
        at = int(np.argmax(total))
        n = len(self.names)
        step = f"forward %{self.names[at]}" if at < n else f"backward %{self.names[2 * n - 1 - at]}"
        return MemoryBreakdown(float(total[at]), step, **{c: float(prof[c][at]) for c in CATEGORIES})

    def step_bounds(self, upper: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per step, a bound on M(f_t) and M(b_t) over all plans: every term at its largest (smallest)."""
        red = np.max if upper else np.min
        n = len(self.names)
        static = sum(float(red(a + b)) for a, b in zip(self.param, self.opt)) + self.resident_extra
        grad_at = np.zeros(n)
        for k, vec in enumerate(self.grad):
            grad_at[self.last_use[k]] += red(vec)
        grads = np.cumsum(grad_at[::-1])[::-1] + self.backward_extra
        acts = np.array([float(red(v)) + sum(float(red(rv)) for _r, rv in views)
                         for v, views in zip(self.saved, self.saved_views)])
        for _, t, mat in self.kept_copies:
            acts[t] += red(mat)
        acts = np.cumsum(acts)
        copies = np.zeros(n)
        for _, t, mat in self.copies:
            copies[t] += red(mat)
        out = np.array([float(red(v)) for v in self.out])
        dout = np.array([float(red(v)) for v in self.dout])
        fwd = np.array([out[self.live[t]].sum() for t in range(n)])
        bwd = np.array([dout[self.live[t]].sum() for t in range(n)])
        base = static + acts + copies
        return base + fwd, base + grads + bwd

    def bound(self, upper: bool) -> float:
        """A bound on the peak of any plan (upper: no plan exceeds it; lower: none goes below it)."""
        fwd, bwd = self.step_bounds(upper)
        return float(max(fwd.max(initial=0.0), bwd.max(initial=0.0)))


def _view_hops(node, root_name: str, edges_into: dict) -> list[int]:
    """The edges on the way from storage root ``root_name`` through views to ``node`` (nearest ``node`` first)."""
    hops, child = [], node
    while child.name != root_name:
        parent = next((a for a in child.all_input_nodes if "storage" in a.meta
                       and any(r is not None and r[0] == root_name for r in a.meta["storage"].roots)), None)
        if parent is None or (parent, child) not in edges_into:
            break
        hops.append(edges_into[(parent, child)])
        child = parent
    return hops


__all__ = ["MemoryModel", "MemoryBreakdown", "OPTIMIZERS", "state_factors", "CATEGORIES"]
