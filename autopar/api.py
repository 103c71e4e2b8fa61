"""The one-liners: ``plan`` (no process group, no GPU) and ``autoparallelize`` (inside every rank)."""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError


def plan(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *, memory_budget: float | None = None,
         time_limit: float = 60.0, optimizer: str = "adamw", progress=None):
    """The ShardingPlan for ``model`` on ``cluster_info``: trace, build strategies, solve.

    Needs no process group and no GPU; model and inputs may live on ``meta``.
    ``memory_budget`` is bytes per device (default: the cluster's device memory); ``optimizer``
    (adamw, adam, sgd_momentum, sgd) sets the optimizer state the memory model counts.
    ``progress``: called with a line as each stage starts and ends (the CLI prints them).
    """
    from autopar.tracer import trace

    say = progress or (lambda line: None)
    with _stage(say, "tracing"):
        gm = trace(model, example_inputs)
    return _solve(gm, cluster_info, memory_budget, time_limit, optimizer=optimizer, say=say)


@contextlib.contextmanager
def _stage(say, name: str):
    say(f"{name} ...")
    t0 = time.perf_counter()
    yield
    say(f"{name}: {time.perf_counter() - t0:.2f} s")


def _plan_stages(gm, cluster_info, memory_budget, time_limit, checkpoint):
    """Stage 1 (sharding) and, when asked or needed, stage 2 (checkpointing): (ShardingPlan, CheckpointPlan|None).

    checkpoint=None: only when no sharding plan fits the budget by itself: stage 1 finds none, or
    stage 2's per-device account of the one it finds (``chain_of``: what each node saves under the
    chosen strategies, resharded copies included) holds more activations than the budget leaves.
    "none": never. "auto": also when the fastest sharding plan plus recomputation beats the one that
    fits. A list of module names: exactly those modules, each one region.
    """
    from autopar.errors import InfeasibleBudgetError
    from autopar.solver.checkpoint import checkpoint_modules, plan_checkpoints

    mesh = cluster_info.mesh_shape
    if checkpoint not in (None, "none", "auto") and not isinstance(checkpoint, (list, tuple)):
        raise AutoparError(f"checkpoint must be None, 'none', 'auto' or a list of module names, got {checkpoint!r}")
    if isinstance(checkpoint, (list, tuple)):
        sharding = _solve(gm, cluster_info, memory_budget, time_limit)
        return sharding, checkpoint_modules(gm, mesh, list(checkpoint))
    fitted = first_error = None
    try:
        fitted = _solve(gm, cluster_info, memory_budget, time_limit)
    except InfeasibleBudgetError as err:
        if checkpoint == "none":
            raise
        first_error = err
    budget = memory_budget if memory_budget is not None else cluster_info.memory_per_device
    if fitted is not None and (checkpoint == "none" or checkpoint is None and _activations_fit(gm, fitted, budget)):
        return fitted, None
    # Stage 2 runs on two stage-1 candidates: the plan stage 1 fitted to the budget (or, when none fits,
    # the one needing least memory: solved at the smallest budget stage 1 meets), and the fastest plan.
    # The fastest that fits wins. Each solve writes meta["strategy"], which stage 2 reads.
    def candidates():
        yield fitted if fitted is not None else _solve(gm, cluster_info, first_error.min_budget, time_limit)
        yield _solve(gm, cluster_info, None, time_limit)

    best, smallest = (None, None), math.inf
    for sharding in candidates():
        state = _state(sharding)
        try:
            stage2 = plan_checkpoints(gm, mesh, budget - state)
        except InfeasibleBudgetError as err:
            smallest = min(smallest, state + err.min_budget)
            continue
        stage2 = stage2 if stage2.regions else None
        if best[0] is None or _time(sharding, stage2) < _time(*best):
            best = (sharding, stage2)
    if best[0] is None:
        raise InfeasibleBudgetError(budget, smallest, detail="(with activation checkpointing)")
    return best


def _state(sharding) -> float:
    """Bytes per device of parameters, gradients and optimizer state: what activations cannot use."""
    return sum(row.memory for row in sharding.rows if row.op in ("param", "buffer"))


def _activations_fit(gm, sharding, budget: float) -> bool:
    """Whether ``sharding``'s activations (stage 2's chain, no recomputation) fit what the budget leaves."""
    from autopar.solver.checkpoint import chain_of
    from autopar.solver.checkpoint_dp import no_checkpoint

    _stages, chain = chain_of(gm, sharding.mesh_shape)
    return _state(sharding) + no_checkpoint(chain).peak <= budget


def _time(sharding, stage2) -> float:
    return sharding.step_time + (stage2.extra_time if stage2 is not None else 0.0)


def _solve(gm, cluster_info, memory_budget, time_limit, *, optimizer: str = "adamw", say=lambda line: None):
    from autopar.solver.build import build_strategies
    from autopar.solver.ilp import solve

    with _stage(say, f"strategies for {len(gm.graph.nodes)} nodes"):
        strategy_graph = build_strategies(gm, cluster_info)
    with _stage(say, f"ILP (time limit {time_limit:g} s)"):
        return solve(strategy_graph, cluster_info, memory_budget=memory_budget, time_limit=time_limit,
                     optimizer=optimizer)


def autoparallelize(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *,
                    memory_budget: float | None = None, time_limit: float = 60.0, checkpoint=None,
                    kernels: bool | None = None):
    """This rank's ParallelModule for ``model``; call it on every rank of an initialised process group.

    Every rank traces the same graph; rank 0 solves and broadcasts the plan so all ranks run the
    same one; then each rank generates its own graph with its parameter shards. Every rank calls
    the result with the same global inputs and gets the full outputs. ``checkpoint``: see
    ``_plan_stages`` (default: recompute activations only when no sharding plan fits alone).
    ``kernels``: swap in autopar's Triton kernels (default: on CUDA only).
    """
    from autopar.runtime.checkpoint_regions import wrap_regions
    from autopar.runtime.codegen import generate
    from autopar.runtime.kernel_pass import kernels_enabled, swap_kernels
    from autopar.runtime.mesh import RuntimeMesh
    from autopar.runtime.shape_consistency import ShapeConsistencyManager
    from autopar.tracer import trace

    if any(p.is_meta for p in model.parameters()):
        raise AutoparError("autoparallelize needs the model's real weights, but some parameters are on 'meta'; "
                           "materialise the model (e.g. model.to_empty(device='cpu') and initialise it), "
                           "or call autopar.plan(...) to plan without weights")
    mesh = RuntimeMesh(cluster_info)
    gm = trace(model, example_inputs)
    chosen, stage2 = _broadcast_plan(lambda: _plan_stages(gm, cluster_info, memory_budget, time_limit, checkpoint))
    for node in gm.graph.nodes:
        if node.meta.get("tensor") is not None or node.op == "get_attr":
            node.meta["strategy"] = chosen.strategy_of(node.name)
    module = generate(gm, mesh, ShapeConsistencyManager(cluster_info))
    if kernels_enabled(mesh.device, kernels):
        module.kernel_substitutions = tuple(swap_kernels(module, force=True))
    if stage2 is not None:
        wrap_regions(module, stage2.regions)
    module.plan, module.checkpoint_plan = chosen, stage2
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
