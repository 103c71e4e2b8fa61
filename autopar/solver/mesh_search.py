"""The logical mesh: the cluster's own, one the user fixes, or the fastest of a search (``PlanOptions.mesh``).

``mesh="search"`` plans the traced graph (traced once: tracing does not depend on the mesh) on every
candidate mesh of the cluster's ``topology`` and returns the fastest plan that fits, a normal Plan
whose cluster is the chosen mesh, with every mesh weighed in ``Plan.meshes``. The candidates:

- every shape of 1 to 3 axes of size >= 2 whose product is the world size and that respects the nodes
  (``Topology.meshes``: each axis, with the axes after it, spans a divisor or a multiple of a node);
- less those *dominated* by a permutation of themselves: B = (n_0, n_1, ...) is dropped when some mesh A
  of the same axis sizes, matched axis to axis by size, puts every axis on a link at least as fast
  (alpha and beta) and one on a faster one. Strategies and memory depend only on the axis sizes, so A
  offers the same plans with cheaper collectives (``2x32``, whose 32 crosses nodes, is dominated by
  ``32x2``, whose 2 stays in a node). Axis order within a tensor dim follows mesh order, so the
  dominance is exact up to that order; the report names each dropped mesh with its dominator.

Candidates are planned one after the other (each writes its strategies into ``node.meta`` and is
finished, as frozen data, before the next), the cluster's own mesh first, then fewest axes first; with
``PlanOptions.workers`` > 1 the cluster's own first, then the rest in forked processes (each plans its
mesh on its copy of the graph and returns the Plan pickled; each starts bounded by the best plan finished
so far by any of them).
Each starts with its fastest plan (no budget): when that fits, it is the mesh's plan (as fast as
``plan_graph``'s); when it does not, its step time is a lower bound for the mesh, and a mesh whose
bound is no better than the best plan so far is not taken through stage 2 (the memory-bound case,
where stage 2 costs most). The chosen one is the fastest (then the least peak, then the fewest
axes) among those that fit; when none fits, the error states the smallest budget over the meshes
(planning again at it fits that mesh).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time

import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.options import PlanOptions
from autopar.solver.full_plan import MeshTrial, Plan
from autopar.solver.planner import Planner, fastest_if_it_fits, plan_graph, plan_of
from autopar.solver.quiet import gc_paused


def cluster_for(cluster: ClusterInfo, mesh, plan: Plan | None = None) -> ClusterInfo:
    """The cluster with the logical mesh ``mesh`` (``PlanOptions.mesh``); for "search", the mesh ``plan`` chose
    (None before planning: the search has not chosen yet)."""
    if mesh is None:
        return cluster
    if mesh == "search":
        if plan is None:
            _need_topology(cluster)
            return cluster
        mesh = plan.mesh_shape
    if math.prod(mesh) != cluster.world_size:
        raise AutoparError(f"mesh {_label(mesh)} has {math.prod(mesh)} devices, the cluster {cluster.name} has "
                           f"{cluster.world_size} ({_label(cluster.mesh_shape)}): give a shape whose product is "
                           f"{cluster.world_size}, or mesh='search'")
    return cluster.with_mesh(mesh)


def plan_on_mesh(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, say=lambda line: None) -> Plan:
    """``plan_graph`` on the mesh ``options.mesh`` asks for: the cluster's own, a fixed one, or a search's choice."""
    if options.mesh == "search":
        return search(gm, cluster, options, say)
    return plan_graph(gm, cluster_for(cluster, options.mesh), options, say)


def candidates(cluster: ClusterInfo, max_ndim: int = 3) -> tuple[list[tuple[int, ...]], dict[tuple, tuple]]:
    """(meshes to plan, {dropped mesh: the mesh that dominates it}) for ``cluster``'s topology (module docstring)."""
    topology = _need_topology(cluster)
    shapes = topology.meshes(max_ndim)
    links = {s: _links(cluster.with_mesh(s)) for s in shapes}
    beaten = {b: [a for a in shapes if a != b and sorted(a) == sorted(b) and _dominates(links[a], links[b])]
              for b in shapes}
    kept = [s for s in shapes if not beaten[s]]
    # name a dominator that is itself planned (dominance is transitive, so one is)
    return kept, {b: next(a for a in by if a in kept) for b, by in beaten.items() if by}


@gc_paused
def search(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, say=lambda line: None,
           max_ndim: int = 3) -> Plan:
    """The fastest plan that fits over the candidate meshes of up to ``max_ndim`` axes, its ``meshes`` listing each
    (module docstring)."""
    shapes, dominated = candidates(cluster, max_ndim)
    say(f"mesh search: {len(shapes)} meshes to plan ({', '.join(map(_label, shapes))}), {len(dominated)} dominated")
    plans: list[Plan] = []
    trials: dict[tuple, MeshTrial] = {}
    errors: list[Exception] = []
    order = sorted(shapes, key=lambda s: s != cluster.mesh_shape)  # the cluster's own first: a good incumbent
    for shape, (plan, note, err, seconds) in _trials(gm, cluster, options, order, say):
        if isinstance(err, InfeasibleBudgetError):
            errors.append(err)
            trials[shape] = MeshTrial(shape, None, None, seconds,
                                      f"does not fit: needs {_gib(err.min_budget)} per device")
        elif err is not None:
            errors.append(err)
            trials[shape] = MeshTrial(shape, None, None, seconds, f"no plan: {err}")
        else:
            if plan is not None:
                plans.append(plan)
            trials[shape] = MeshTrial(shape, plan.step_time if plan else None, plan.peak_memory if plan else None,
                                      seconds, note)
        t = trials[shape]
        say(f"mesh {_label(shape)}: " + (f"{t.step_time * 1e3:.3f} ms per step, peak {_gib(t.peak_memory)}"
                                         if t.step_time is not None else t.note) + f" ({t.seconds:.2f} s)")
    for b, a in dominated.items():
        trials[b] = MeshTrial(b, None, None, 0.0, f"dominated by {_label(a)}: the same axes, each on a link at "
                                                  f"least as fast")
    if not plans:
        infeasible = [e for e in errors if isinstance(e, InfeasibleBudgetError)]
        if len(infeasible) == len(errors):
            least = min(e.min_budget for e in infeasible)
            raise InfeasibleBudgetError(infeasible[0].budget, least, detail="(on the best of the meshes searched)")
        raise errors[0]
    best = min(plans, key=lambda p: (p.step_time, p.peak_memory, len(p.mesh_shape)))
    order = [s for s in cluster.topology.meshes(max_ndim) if s in trials]
    return dataclasses.replace(best, meshes=tuple(trials[s] for s in order))


def _trials(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, order: list, say):
    """(shape, (plan or None, note, error or None, seconds)) for each mesh of ``order``, in that order: one after
    the other, each bounded by the best plan before it; or, with ``options.workers`` > 1, the first alone and
    the rest in forked processes (``_in_parallel``)."""
    best = math.inf
    workers = _workers(options.workers, len(order) - 1)
    for shape in order if workers == 1 else order[:1]:
        say(f"mesh {_label(shape)} ...")
        result = _trial(gm, cluster, options, shape, best, say)
        if result[0] is not None:
            best = min(best, result[0].step_time)
        yield shape, result
    if workers > 1:
        yield from _in_parallel(gm, cluster, options, order[1:], best, workers, say)


def _trial(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, shape: tuple, best: float, say) -> tuple:
    t0 = time.perf_counter()
    try:
        plan, note = _plan_mesh(gm, cluster.with_mesh(shape), options, say, best)
    except AutoparError as err:
        return None, "", err, time.perf_counter() - t0
    return plan, note, None, time.perf_counter() - t0


_FORKED: dict = {}  # what a forked worker plans: set before the pool forks, so inherited, never pickled


def _forked_trial(shape: tuple) -> tuple:
    """One mesh in a forked worker, bounded by the best plan any worker has finished so far (a shared double)."""
    gm, cluster, options = _FORKED["args"]
    best = _FORKED["best"]
    result = _trial(gm, cluster, options, shape, best.value, lambda line: None)
    if result[0] is not None:
        with best.get_lock():
            best.value = min(best.value, result[0].step_time)
    return result


def _in_parallel(gm, cluster, options, shapes: list, best: float, workers: int, say):
    """``_trials`` of ``shapes`` in ``workers`` forked processes (each returns its Plan pickled), in order. Each
    mesh starts bounded by the best plan finished so far by any worker, so which slower meshes are bounded
    out (and their rows in ``Plan.meshes``) may vary from run to run; the plan chosen does not (a bounded
    mesh cannot beat the plan that bounds it, and ties go to the candidates' order)."""
    import concurrent.futures
    import multiprocessing

    say(f"meshes {', '.join(map(_label, shapes))} ... ({workers} processes)")
    context = multiprocessing.get_context("fork")
    _FORKED.update(args=(gm, cluster, options), best=context.Value("d", best))
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_forked_trial, shape) for shape in shapes]
            for shape, future in zip(shapes, futures):
                yield shape, future.result()
    finally:
        _FORKED.clear()


def _workers(asked, meshes: int) -> int:
    """Processes for ``meshes`` meshes: ``asked`` ("auto": the CPU cores this process may use), at most one per
    mesh; 1 without the fork start method."""
    import multiprocessing
    import os

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores if asked == "auto" else int(asked), meshes))


def _plan_mesh(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, say, best: float
               ) -> tuple[Plan | None, str]:
    """(the Plan on this mesh, or None when it cannot beat ``best`` seconds per step; a note). Its fastest plan (no
    budget) comes first: when it fits, it is the plan; when it does not, its step time bounds every plan of this
    mesh from below (a budget only restricts, recomputation only adds), so a proven-optimal one at or above
    ``best`` ends this mesh without stage 2; otherwise stage 1 at the budget and stage 2 as ``plan_graph``."""
    if isinstance(options.checkpoint, tuple):  # named modules are recomputed whatever fits
        return plan_graph(gm, cluster, options, say), ""
    planner = Planner(gm, cluster, options, say)
    plan, fastest = fastest_if_it_fits(planner)
    if plan is not None:
        return plan, ""
    if fastest.stats.sol_status == 1 and fastest.step_time >= best:
        return None, (f"slower than the chosen: its fastest plan takes {fastest.step_time * 1e3:.3f} ms and "
                      f"needs recomputation to fit")
    return plan_of(planner), ""


def _need_topology(cluster: ClusterInfo):
    if cluster.topology is None:
        raise AutoparError(f"mesh='search' needs to know the cluster's nodes, and {cluster.name} has no topology: "
                           f"use a preset (ClusterInfo.preset('8x8xH100')) or ClusterInfo.physical(nodes, per_node, "
                           f"...), or pass ClusterInfo(..., topology=Topology(nodes, per_node, intra, inter))")
    return cluster.topology


def _links(cluster: ClusterInfo) -> list[tuple[int, float, float]]:
    return [(n, a, b) for n, a, b in zip(cluster.mesh_shape, cluster.alpha, cluster.beta)]


def _dominates(a: list, b: list) -> bool:
    """Some matching of ``a``'s axes to ``b``'s of the same sizes puts each on a link no slower, one faster."""
    for perm in itertools.permutations(a):
        if all(x[0] == y[0] for x, y in zip(perm, b)):
            no_slower = all(x[1] <= y[1] and x[2] <= y[2] for x, y in zip(perm, b))
            faster = any(x[1] < y[1] or x[2] < y[2] for x, y in zip(perm, b))
            if no_slower and faster:
                return True
    return False


def _label(shape) -> str:
    return "x".join(map(str, shape))


def _gib(n: float) -> str:
    from autopar.report.text import human_bytes

    return human_bytes(n)
