"""The one-liners: ``plan`` (no process group, no GPU) and ``autoparallelize`` (inside every rank)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError


def plan(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *, memory_budget: float | None = None,
         time_limit: float = 60.0):
    """The ShardingPlan for ``model`` on ``cluster_info``: trace, build strategies, solve.

    Needs no process group and no GPU; model and inputs may live on ``meta``.
    ``memory_budget`` is bytes per device (default: the cluster's device memory).
    """
    from autopar.tracer import trace

    gm = trace(model, example_inputs)
    return _solve(gm, cluster_info, memory_budget, time_limit)


def _solve(gm, cluster_info, memory_budget, time_limit):
    from autopar.solver.build import build_strategies
    from autopar.solver.ilp import solve

    strategy_graph = build_strategies(gm, cluster_info)
    return solve(strategy_graph, cluster_info, memory_budget=memory_budget, time_limit=time_limit)


def autoparallelize(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *,
                    memory_budget: float | None = None, time_limit: float = 60.0):
    """This rank's ParallelModule for ``model``; call it on every rank of an initialised process group.

    Every rank traces the same graph; rank 0 solves and broadcasts the plan so all ranks run the
    same one; then each rank generates its own graph with its parameter shards. Every rank calls
    the result with the same global inputs and gets the full outputs.
    """
    from autopar.runtime.codegen import generate
    from autopar.runtime.mesh import RuntimeMesh
    from autopar.runtime.shape_consistency import ShapeConsistencyManager
    from autopar.tracer import trace

    if any(p.is_meta for p in model.parameters()):
        raise AutoparError("autoparallelize needs the model's real weights, but some parameters are on 'meta'; "
                           "materialise the model (e.g. model.to_empty(device='cpu') and initialise it), "
                           "or call autopar.plan(...) to plan without weights")
    mesh = RuntimeMesh(cluster_info)
    gm = trace(model, example_inputs)
    chosen = _broadcast_plan(lambda: _solve(gm, cluster_info, memory_budget, time_limit))
    for node in gm.graph.nodes:
        if node.meta.get("tensor") is not None or node.op == "get_attr":
            node.meta["strategy"] = chosen.strategy_of(node.name)
    module = generate(gm, mesh, ShapeConsistencyManager(cluster_info))
    module.plan = chosen
    return module


def _broadcast_plan(make_plan):
    """Rank 0 makes the plan (or fails); every rank returns it (or raises the same error)."""
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = make_plan()
        except Exception as exc:  # every rank must raise, not wait forever on the broadcast
            box[0] = exc
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
