"""Shrink the ILP: trivial ops follow their producer, identical repeated layers share variables.

The result is a ``Reduction``: for each node k an *owner* (the node whose one-hot variables
decide k, or None when k has a single strategy) and ``pick[k]``, a map from the owner's
strategy index to k's. The plan is ``choice[k] = pick[k][x[owner[k]]]``, so every cost and
memory term of k is a term of its owner's variables: the reduced ILP prices exactly the plans
it can express, and those are plans of the full ILP.

Merge rule. A node v is merged into its producer u when

- v is trivial: a view-like op (view, permute, getitem, contiguous), a cast, dropout, or a
  pointwise op with a single tensor input (``gelu(x)``, ``x * 0.5``), and v has one input node;
- for every strategy i of u's owner, exactly one strategy j of v takes u's output spec as is
  (``v.inputs[0] == u.output``): then v follows, ``pick[v][i] = j``, and the edge (u, v) costs 0;
- following is proven never dearer than any other choice j' the full ILP could make for v
  (``_never_dearer``): C_v(j) + sum over v's out-edges w of max over w's columns of
  (E_w[j, col] - E_w[j', col]) <= E_uv[i, j'] + C_v(j'), with C_v v's own time and E the edges'
  priced matrices (so a bucketed gather's discount is counted as priced). Then any plan of the full
  ILP becomes one of the merged ILP, at no more cost, by moving v onto j: the objective's optimum
  is kept (the memory rows are not part of the proof: under a binding budget the optimum of
  the merged ILP may be above the full one's, as with sharing).

What following gives up, and the check catches: the full ILP may reshard *before* v where the
merged one reshards *after* it, and v may then run on a smaller shard (a ``clone`` computed on
1/n of the tensor) or the reshard move fewer bytes (before a downcast, after a slice). Where
u can produce a spec v cannot take (a partial sum into ``gelu``), or v could run several ways on it
(``expand``), or following is not proven never dearer, v keeps its own variables.

Sharing rule. Parameter names ``<prefix>.<i>.<rest>`` name the repeated layers (``h.3``,
``layers.17``); layer i's segment of the graph runs from the first node of layer i to the first
of layer i+1 (graph order places each ``get_attr`` at its first use). When all segments have
the same length, the owner at position p of segment i is tied to the owner at position p of
segment 0 if both have the same strategies (same specs): one set of variables decides all.
Tying forces every layer onto the same plan (boundary layers cannot differ); it is what the
brief "identical repeated layers share ILP variables" asks for, and keeps the Llama-size ILP small.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from autopar.solver.build import StrategyGraph
from autopar.tracer.ops import Prop, has

_LAYER = re.compile(r"^(.*?)\.(\d+)\.")


@dataclass
class Reduction:
    owner: list[int | None]  # per node: index of the node owning its variables (None: a single strategy)
    pick: list[np.ndarray]  # per node: owner's strategy index -> this node's strategy index
    merged: int = 0  # nodes that follow their producer
    tied: int = 0  # owners that share another owner's variables
    repeats: int = 0  # repeated layers detected (0: none)
    starts: tuple[int, ...] = ()  # graph position where each repeated layer begins (when tied)
    length: int = 0  # nodes per repeated layer

    def choice(self, values: dict[int, int]) -> list[int]:
        """Every node's strategy index from the owners' chosen indices."""
        return [int(p[values[o]]) if o is not None else int(p[0]) for o, p in zip(self.owner, self.pick)]

    def owners(self) -> list[int]:
        return sorted({o for o in self.owner if o is not None})


def reduce(sg: StrategyGraph, *, merge: bool = True, share: bool = True) -> Reduction:
    """The Reduction of ``sg``: identity when both rules are off."""
    nodes = sg.nodes
    index = {v: k for k, v in enumerate(nodes)}
    strats = [v.meta["strategies"] for v in nodes]
    owner: list[int | None] = [k if len(s) > 1 else None for k, s in enumerate(strats)]
    pick = [np.arange(len(s)) for s in strats]
    merged = 0
    if merge:
        into: dict = {}  # (producer, consumer) -> Edge
        out: dict = {}  # producer -> its Edges
        for edge in sg.edges:
            into[(edge.src, edge.dst)] = edge
            out.setdefault(edge.src, []).append(edge)
        spread: dict = {}  # id(spec_cost) -> its rows' worst differences (_spread), repeated layers share them
        for k, v in enumerate(nodes):
            if not _trivial(v) or len(strats[k]) < 2:
                continue
            u = index.get(v.all_input_nodes[0])
            if u is None:
                continue
            follow = _follow(strats[u], pick[u], strats[k])
            if follow is not None and _never_dearer(pick[u], follow, strats[k], into.get((nodes[u], v)),
                                                    out.get(v, []), spread):
                owner[k], pick[k] = owner[u], follow
                merged += 1
    tied, starts, length = _tie(sg, owner, pick, strats) if share else (0, [], 0)
    return Reduction(owner, pick, merged, tied, len(starts), tuple(starts), length)


def _trivial(v) -> bool:
    op = v.meta.get("op")
    if len(v.all_input_nodes) != 1 or v.op != "call_function":
        return False
    return has(op, Prop.TRIVIAL | Prop.POINTWISE)


def _follow(producer, producer_pick, consumer) -> np.ndarray | None:
    """For each strategy of the producer's owner, the one consumer strategy taking its output as is."""
    by_input: dict = {}
    for j, s in enumerate(consumer):
        by_input.setdefault(s.inputs[0], []).append(j)
    out = []
    for i in producer_pick:
        js = by_input.get(producer[i].output, [])
        if len(js) != 1:
            return None
        out.append(js[0])
    return np.array(out)


def _never_dearer(producer_pick, follow, consumer, edge_in, edges_out, spread: dict) -> bool:
    """Whether v following its producer (``follow[i]`` under owner strategy i) is never dearer than v in any
    strategy j' (module docstring's merge rule), from the priced matrices of v's in-edge and out-edges."""
    own = np.array([s.compute_time + s.comm_time for s in consumer])
    n = len(consumer)
    worse = np.zeros((n, n))  # [j, j'] -> most that v's consumers can pay more reading j's output than j''s
    for edge in edges_out:
        if edge.forbidden is not None:
            return False
        key = id(edge.spec_cost)
        if key not in spread:
            a = edge.spec_cost
            spread[key] = (a[:, None, :] - a[None, :, :]).max(axis=2)
        g = edge.src_group
        worse += spread[key][np.ix_(g, g)]
    reshard = (edge_in.cost[np.asarray(producer_pick)] if edge_in is not None
               else np.zeros((len(producer_pick), n)))  # [i, j'] -> reshard u's output before v runs as j'
    lhs = own[follow][:, None] + worse[follow]
    rhs = reshard + own[None, :]
    return bool(np.all(lhs <= rhs + 1e-12 * np.abs(rhs) + 1e-18))


def _tie(sg: StrategyGraph, owner: list, pick: list, strats: list) -> tuple[int, list[int], int]:
    """Tie the owners of repeated layers to those of the first; returns (owners tied, layer starts, length)."""
    starts = _layer_starts(sg)
    if len(starts) < 2:
        return 0, [], 0
    length = starts[1] - starts[0]
    if any(b - a != length for a, b in zip(starts, starts[1:])) or starts[-1] + length > len(sg.nodes):
        return 0, [], 0
    tie: dict[int, int] = {}
    for p in range(length):
        first = starts[0] + p
        if owner[first] != first:
            continue
        keys = [s.key for s in strats[first]]
        for start in starts[1:]:
            k = start + p
            if owner[k] == k and [s.key for s in strats[k]] == keys:
                tie[k] = first
    for k, o in enumerate(owner):
        if o in tie:
            owner[k] = tie[o]
    return len(tie), starts, length


def _layer_starts(sg: StrategyGraph) -> list[int]:
    """Graph positions where each repeated layer begins (by parameter names), in layer order."""
    first: dict[tuple[str, int], int] = {}
    for k, v in enumerate(sg.nodes):
        name = v.meta.get("param") if v.op == "get_attr" else None
        m = _LAYER.match(name) if name else None
        if m:
            first.setdefault((m.group(1), int(m.group(2))), k)
    if not first:
        return []
    prefix, _ = Counter(p for p, _ in first).most_common(1)[0]
    layers = sorted((i, k) for (p, i), k in first.items() if p == prefix)
    if [i for i, _ in layers] != list(range(len(layers))):
        return []
    return [k for _, k in layers]
