"""build_strategies: every node's candidate Strategies and every edge's resharding costs.

Writes ``node.meta["strategies"]`` (list[Strategy], all-replicate first, no two with the same
specs) and returns a StrategyGraph holding, for each edge (producer u, consumer v, input k of v),
the matrix ``cost[i, j]`` = seconds (forward + backward) to turn u's output spec of strategy i
into the spec v's strategy j wants for input k, priced by the shape consistency manager on the
producer's global shape (the element's shape for ``getitem`` of a tuple-valued node).
Edges on which nothing is ever resharded (an all-zero matrix) are left out.

A weight gathered whole by one all-gather on a mesh axis (``param_gather.gathered_weight``) travels in a
bucket with others (runtime/param_gather.py): one all-gather forward and one reduce-scatter backward per
bucket of ``bucket_bytes`` gathered bytes. Its edge pays the bytes as priced and, of the bucket's two
latencies (the all-gather's and the reduce-scatter's alpha), the share ``min(1, gathered / bucket_bytes)``,
as a replicated gradient pays its share of its chunk's (``cost_model.grad_sync_time``); ``Edge.bucketed``
keeps such an edge out of the ILP's flows, whose arcs price a collective alone.

A tuple-valued producer (``topk``, ``split``) is never resharded as a whole: the runtime reshards
its elements (``getitem``). So on an edge from one into a consumer that takes the whole tuple, a
pair of strategies where the consumer wants another spec than the producer makes cannot run:
``Edge.forbidden`` marks those pairs and the ILP excludes them (they are not priced at all).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.runtime.param_gather import gathered_weight, single_gather
from autopar.solver.cost_model import Pricing, itemsize
from autopar.solver.strategies import memoised_strategies
from autopar.solver.strategies.base import is_tuple_meta
from autopar.solver.strategy import Strategy
from autopar.spec import ShardingSpec
from autopar.tracer.meta import TensorMeta

ReshardCost = Callable[[ShardingSpec, ShardingSpec, Sequence[int], int], float]


@dataclass(frozen=True)
class Edge:
    """Resharding costs of one edge, stored once per distinct (output spec, wanted spec) pair.

    ``cost[i, j] = spec_cost[src_group[i], dst_group[j]]``: strategies of the producer with the
    same output spec share a row group, strategies of the consumer wanting the same spec a column
    group (the ILP linearises over these groups, which is exact and much smaller).
    """

    src: fx.Node
    dst: fx.Node
    index: int  # position of src in dst.all_input_nodes
    spec_cost: np.ndarray  # [distinct output spec of src, distinct spec dst wants] -> seconds
    src_group: np.ndarray  # strategy of src -> row of spec_cost
    dst_group: np.ndarray  # strategy of dst -> column of spec_cost
    forbidden: np.ndarray | None = None  # [row, column] -> the pair cannot run (a whole tuple resharded)
    bucketed: bool = False  # some pairs are a weight's gather priced as its share of a bucket's

    @property
    def cost(self) -> np.ndarray:
        """[strategy of src, strategy of dst] -> seconds."""
        return self.spec_cost[np.ix_(self.src_group, self.dst_group)]


@dataclass
class StrategyGraph:
    gm: fx.GraphModule
    cluster: ClusterInfo
    nodes: list[fx.Node]
    edges: list[Edge] = field(default_factory=list)
    # the shape consistency manager that priced the edges (None for another ``reshard_cost``): its spec graph
    # lets the ILP pose a large edge as a flow (flow.py)
    reshard: object | None = None
    flow_graphs: dict = field(default_factory=dict)  # flow.py's spec graphs, memoised across solves

    def strategies(self, node: fx.Node) -> list[Strategy]:
        return node.meta["strategies"]

    def num_strategies(self) -> int:
        return sum(len(self.strategies(n)) for n in self.nodes)


def build_strategies(gm: fx.GraphModule, cluster: ClusterInfo, *, reshard_cost: ReshardCost | None = None,
                     pricing: Pricing | None = None, bar=None) -> StrategyGraph:
    """Enumerate and price every node's strategies and every edge's resharding (pure: no process group).

    ``pricing``: the optimizer whose state each parameter strategy carries and the gradient chunk size
    (``cost_model.Pricing``, from PlanOptions); ``bar(label,
    done, total)``, when given, is told the progress over the nodes."""
    manager = None
    if reshard_cost is None:
        from autopar.runtime.shape_consistency import ShapeConsistencyManager

        manager = ShapeConsistencyManager(cluster)
    pricing = pricing if pricing is not None else Pricing()
    matrix_cost = manager.cost_matrix if manager is not None else _matrix_of(reshard_cost)
    bucketed = _bucket_share(manager, cluster, pricing.bucket_bytes) if manager is not None else None
    nodes = list(gm.graph.nodes)
    memo: dict = {}  # repeated layers: each distinct op signature is enumerated and priced once
    step = max(1, len(nodes) // 50)
    for k, node in enumerate(nodes):
        node.meta["strategies"] = memoised_strategies(node, cluster, memo, pricing)
        if bar is not None and (k % step == 0 or k == len(nodes) - 1):
            bar("strategies", k + 1, len(nodes))
    graph = StrategyGraph(gm, cluster, nodes, reshard=manager)
    cache: dict = {}  # repeated layers ask for the same (specs, shape) matrices again and again
    for node in nodes:
        for k, src in enumerate(node.all_input_nodes):
            edge = _edge(src, node, k, matrix_cost, cache, bucketed if gathered_weight(src) else None)
            if edge is not None:
                graph.edges.append(edge)
    return graph


def _edge_meta(src: fx.Node, dst: fx.Node) -> tuple[TensorMeta | None, bool]:
    """(the tensor that travels on the edge, whether it is one element of a tuple-valued producer)."""
    tm = src.meta.get("tensor")
    if not is_tuple_meta(tm):
        return tm, False
    if dst.meta.get("op") == "getitem" and isinstance(dst.args[1], int):
        return tm[dst.args[1]], False
    return None, True


def _matrix_of(reshard_cost: ReshardCost):
    """A ``(srcs, dsts, shape, itemsize) -> [src, dst] seconds`` from a one-pair ``reshard_cost``."""
    return lambda srcs, dsts, shape, size: np.array([[reshard_cost(s, d, shape, size) if d != s else 0.0
                                                      for d in dsts] for s in srcs]).reshape(len(srcs), len(dsts))


def _bucket_share(manager, cluster: ClusterInfo, bucket_bytes: float):
    """``(src, dst, shape, itemsize) -> seconds`` to take off a weight's priced gather ``src -> dst`` for the
    bucket it travels in (0 where the gather is not one all-gather on a mesh axis: it runs alone)."""
    def discount(src: ShardingSpec, dst: ShardingSpec, shape, size: int) -> float:
        gather = single_gather(manager, src, dst, shape, size, cluster.mesh_shape)
        if gather is None:
            return 0.0
        axis, _dim, gathered = gather
        latency = sum(cluster.link(axis, kind)[0] for kind in ("all_gather", "reduce_scatter"))
        return latency * (1 - min(1.0, gathered / bucket_bytes))
    return discount


def _edge(src: fx.Node, dst: fx.Node, k: int, matrix_cost, cache: dict, bucketed=None) -> Edge | None:
    """The resharding costs of one edge, or None when nothing is ever resharded on it; ``bucketed``: the
    discount of a gathered weight's edge (``_bucket_share``)."""
    outs = [s.output for s in src.meta["strategies"]]
    wants = [s.inputs[k] for s in dst.meta["strategies"]]
    tm, whole_tuple = _edge_meta(src, dst)
    if all(w is None for w in wants) or (tm is None and not whole_tuple):
        return None
    # price each distinct (output spec, wanted spec) pair once
    uo, ui = {s: i for i, s in enumerate(dict.fromkeys(outs))}, {s: j for j, s in enumerate(dict.fromkeys(wants))}
    key = (tuple(uo), tuple(ui), None if whole_tuple else (tuple(tm.shape), tm.dtype), bucketed is not None)
    if key not in cache:
        small, forbidden = np.zeros((len(uo), len(ui))), np.zeros((len(uo), len(ui)), dtype=bool)
        wanted = [(w, j) for w, j in ui.items() if w is not None]
        if whole_tuple:
            for o, i in uo.items():
                forbidden[i, [j for w, j in wanted if w != o]] = True
        elif wanted:  # 0 where nothing moves: a spec's cost to itself is 0
            cols, size = [j for _w, j in wanted], itemsize(tm.dtype)
            small[:, cols] = matrix_cost(list(uo), [w for w, _j in wanted], tm.shape, size)
            if bucketed is not None:
                for o, i in uo.items():
                    moved = [(w, j) for w, j in wanted if w != o]
                    small[i, [j for _w, j in moved]] -= [bucketed(o, w, tm.shape, size) for w, _j in moved]
        cache[key] = small, (forbidden if forbidden.any() else None)
    small, forbidden = cache[key]
    if not small.any() and forbidden is None:
        return None
    return Edge(src, dst, k, small, np.array([uo[s] for s in outs]), np.array([ui[s] for s in wants]), forbidden,
                bucketed is not None)
