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
  (``v.inputs[0] == u.output``): then v follows, ``pick[v][i] = j``, and the edge (u, v) costs 0.

What is given up: the full ILP could reshard *before* v (v runs in another spec than u
produced) where the merged one reshards *after* v; the same bytes move in a different layout
(a view or an elementwise op does not change the byte count). Where u can produce a spec v
cannot take (a partial sum into ``gelu``), or v could run several ways on it (``expand``),
v keeps its own variables.

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
        for k, v in enumerate(nodes):
            if not _trivial(v) or len(strats[k]) < 2:
                continue
            u = index.get(v.all_input_nodes[0])
            if u is None:
                continue
            follow = _follow(strats[u], pick[u], strats[k])
            if follow is not None:
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
