"""The one-liners: ``plan`` (no process group, no GPU) and ``autoparallelize`` (inside every rank)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError
from autopar.options import DTYPES, PlanOptions
from autopar.solver.full_plan import Plan, load_plan  # noqa: F401  (autopar.load_plan)
from autopar.solver.mesh_search import cluster_for, plan_on_mesh
from autopar.solver.planner import stage


def plan(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *, progress=None,
         **options) -> Plan:
    """The Plan that ``autoparallelize`` would run for ``model`` on ``cluster_info``: trace, strategies,
    stage 1 (sharding), stage 2 (checkpointing) when the options ask or the budget needs it.

    Needs no process group and no GPU; model and inputs may live on ``meta``. ``options``: the
    fields of ``PlanOptions`` (``memory_budget`` bytes per device, ``optimizer``, ``checkpoint``,
    ``time_limit``, ``kernels``, ``mesh``), the same keywords ``autoparallelize`` takes. ``progress``: called
    with a line as each stage starts and ends (the CLI prints them). With ``mesh="search"`` the graph is
    traced once and planned on every candidate mesh; the Plan's cluster is the mesh chosen.
    """
    from autopar.tracer import trace

    opts = PlanOptions.of(**options)
    say = progress or (lambda line: None)
    cluster_for(cluster_info, opts.mesh)  # a bad mesh fails before tracing
    with stage(say, "tracing"):
        gm = trace(model, example_inputs, outputs=opts.outputs, compute_dtype=opts.compute_dtype)
    return plan_on_mesh(gm, cluster_info, opts, say)


def autoparallelize(model: torch.nn.Module, cluster_info: ClusterInfo, example_inputs, *, plan: Plan | None = None,
                    progress=None, **options):
    """This rank's ParallelModule for ``model``; call it on every rank of an initialised process group.

    Every rank traces the same graph; rank 0 plans (``autopar.plan``, with the same ``options``) and
    broadcasts the Plan so all ranks run the same one; then each rank generates its own graph with its
    parameter shards. Every rank calls the result with the same global inputs and gets the full
    outputs. ``plan``: a Plan made earlier (``autopar.plan`` or ``autopar.load_plan``): no solving;
    it must match the traced graph, the cluster and the inputs, or an error says what differs.

    The model may live on ``meta``: each rank then allocates only its own shards (``init`` and
    ``seed``, see ``PlanOptions``: the model's initialisers by default, a function, or a
    safetensors checkpoint read slice by slice).

    ``mesh`` (see ``PlanOptions``): ``cluster_info`` describes the devices; the module runs on the mesh the
    options give (for "search", the one the plan chose: ``plan.cluster``).
    """
    from autopar.runtime.checkpoint_regions import wrap_regions
    from autopar.runtime.codegen import generate
    from autopar.runtime.kernel_pass import kernels_enabled, swap_kernels
    from autopar.runtime.materialise import persistent_names, source_for
    from autopar.runtime.mesh import RuntimeMesh
    from autopar.runtime.shape_consistency import ShapeConsistencyManager
    from autopar.tracer import trace

    opts = PlanOptions.of(plan.options if plan is not None else None, **options)
    mesh = RuntimeMesh(cluster_for(cluster_info, opts.mesh, plan))  # before searching: the devices are cluster_info's
    gm = trace(model, example_inputs, outputs=opts.outputs, compute_dtype=opts.compute_dtype)
    if plan is not None:
        plan.check_matches(gm, mesh.cluster, opts)
        chosen = plan
    else:
        chosen = _broadcast_plan(lambda: plan_on_mesh(gm, cluster_info, opts.portable(),
                                                      progress or (lambda line: None)))
    cluster = chosen.cluster  # the logical mesh planned: a search's choice, else mesh.cluster
    if cluster.mesh_shape != mesh.mesh_shape:
        mesh = RuntimeMesh(cluster)
    source = source_for(model, gm, opts.init, opts.seed)  # where each local shard comes from
    # offload as planned: none when the plan keeps everything on the device (offload="auto" may find no need)
    offload = chosen.offload.runtime_option if chosen.offload is not None else "none"
    module = generate(gm, chosen.sharding, mesh, ShapeConsistencyManager(cluster), source,
                      bucket_bytes=opts.bucket_bytes, local_outputs=opts.outputs == "local", seed=opts.seed,
                      reduce_dtype=getattr(torch, DTYPES[opts.reduce_dtype]), offload=offload,
                      device_cap=chosen.memory_budget if chosen.memory_budget < float("inf") else None,
                      recomputed={n for r in chosen.checkpoint.regions for n in r} if chosen.checkpoint else ())
    module.persistent_names = persistent_names(model)  # what a checkpoint holds (checkpoint_io)
    if kernels_enabled(mesh.device, opts.kernels):
        module.kernel_substitutions = tuple(swap_kernels(module, force=True))
    if chosen.checkpoint is not None:
        if offload != "none":
            raise AutoparError("offload does not compose with activation checkpointing yet: pass checkpoint='none' "
                               "(with offload the planner never needs recomputation to fit) or offload='none'")
        wrap_regions(module, chosen.checkpoint.regions)
    module.attach_plan(chosen)
    return module


def optimizer(module, optimizer_cls=torch.optim.AdamW, **kwargs):
    """The optimizer to step ``module`` (a ParallelModule) with, in every mode: ``optimizer_cls`` over
    ``module.parameters()`` without offload; with offload a ``gemini.ChunkOptimizer`` (Adam/AdamW over
    the chunks, stepped on the host where their state lives there)."""
    from autopar.runtime.gemini import optimizer as chunk_optimizer

    return chunk_optimizer(module, optimizer_cls, **kwargs)


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
