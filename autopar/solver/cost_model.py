"""Costs of one Strategy: seconds and bytes per device, never mixed.

For an op node with global profile (F_fwd, F_bwd FLOPs, saved bytes M) and a strategy whose
specs split the work over the mesh axes A_s (the axes on which some tensor of the strategy is
split; on an axis where tensors are only replicated or partial every rank does the full work):

    f        = 1 / prod_{a in A_s} n_a                        (share of the work on one device)
    compute  = max((F_fwd + F_bwd) f / (peak(dtype) e),  B / (bandwidth e))
    B        = (sum of local input bytes + local output bytes) x (3 if a gradient flows, else 1)
               (backward reads the output grad and the inputs, writes the input grads);
               views (view, permute, expand, slice, split, getitem) move no bytes
    memory   = the bytes saved for backward on one device: each storage the node is the first to save
               (tracer/saved.py, ``Storage.first``) at its local size under this strategy (an input it
               reads directly: in the spec this strategy wants it, which is the producer's storage or
               codegen's resharded copy; one it reaches through views: the root's bytes x that input's
               local share; its own output: in the output spec), plus its private bytes (statistics,
               masks) x the local share of its activation inputs (``saved_share``). An op the tracer could
               not replay: M x that share. Stage 2 (checkpoint_saved.py) prices every storage alike.

A partial tensor is full-size on every rank. ``e`` is the cluster's efficiency.

Parameters: memory = local elements x (param + grad + optimizer state bytes per element), from
``state_factors(dtype, optimizer)``, the one model of parameter state that the ILP's liveness
(memory.py), stage 2 and the report all use; and a trainable one replicated on some mesh axes pays
its share of the chunked gradient all-reduce over them (``grad_sync_time``, runtime/grad_sync.py).
Buffers: 1 x local bytes, no sync.
Placeholders: free to shard (every rank has the global input), memory = local bytes.
Resharding between nodes is priced on edges (build.py), not here.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.solver.strategies.base import is_tuple_meta
from autopar.solver.strategy import Strategy
from autopar.spec import ShardingSpec
from autopar.tracer.meta import TensorMeta, dtype_bytes
from autopar.tracer.ops import Prop, has

STORAGE_OPS = ("param", "buffer")  # node kinds, not ops: what a get_attr holds
DEFAULT_BUCKET_BYTES = 25 * 2**20  # PlanOptions.bucket_bytes


@dataclass(frozen=True, slots=True)
class Pricing:
    """The options that change what a strategy costs (from PlanOptions): the optimizer whose state a
    parameter carries, and the chunk size its gradient is reduced in."""

    optimizer: str = "adamw"
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    local_outputs: bool = False  # outputs leave as each rank's shard: nothing is gathered for them

    @classmethod
    def of(cls, options) -> Pricing:
        return cls(options.optimizer, options.bucket_bytes, options.outputs == "local")

# Optimizer -> state tensors per parameter element (moments, momentum buffers).
OPTIMIZERS = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}
_HALF = (torch.float16, torch.bfloat16)


def state_factors(dtype, optimizer: str) -> tuple[float, float, float]:
    """(param, grad, optimizer state) bytes per element of a trainable parameter of ``dtype``.

    fp32 (or fp64) parameters: the optimizer's state tensors in the parameter's dtype. Half-precision
    parameters (mixed precision): the state in fp32 beside an fp32 master copy, so bf16 + AdamW is
    2 + 2 + (4 + 4 + 4) bytes per element.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    size = float(itemsize(dtype))
    states = OPTIMIZERS[optimizer]
    opt = 4.0 * (states + 1) if dtype in _HALF else size * states
    return size, size, opt


@functools.cache
def itemsize(dtype) -> int:
    """Bytes per element of ``dtype`` (cached: building the strategies asks millions of times)."""
    return dtype_bytes(dtype)


def local_bytes(tm: TensorMeta | tuple | None, spec: ShardingSpec | None, mesh_shape: Sequence[int]) -> float:
    """Bytes of one rank's piece of ``tm`` laid out as ``spec`` (each element of a tuple alike)."""
    if tm is None or spec is None:
        return 0.0
    if is_tuple_meta(tm):
        return sum(local_bytes(t, spec, mesh_shape) for t in tm if t is not None)
    shards = math.prod(spec.shards(d, mesh_shape) for d in range(spec.ndim)) if spec.ndim == len(tm.shape) else 1
    return math.prod(tm.shape) * itemsize(tm.dtype) / shards


def _global_bytes(tm) -> float:
    if tm is None:
        return 0.0
    if is_tuple_meta(tm):
        return sum(_global_bytes(t) for t in tm)
    return float(math.prod(tm.shape) * itemsize(tm.dtype))


def work_fraction(specs: Sequence[ShardingSpec | None], mesh_shape: Sequence[int]) -> float:
    """1 / (product of the sizes of mesh axes on which some tensor of the strategy is split)."""
    axes = {a for s in specs if s is not None for dim_axes in s.dims for a in dim_axes}
    return 1.0 / math.prod(mesh_shape[a] for a in axes) if axes else 1.0


def grad_sync_time(local: float, spec: ShardingSpec, cluster: ClusterInfo,
                   bucket_bytes: float = DEFAULT_BUCKET_BYTES) -> float:
    """A replicated parameter's share of the chunked gradient all-reduce (runtime/grad_sync.py).

    Its gradient travels in a chunk of ``bucket_bytes`` with others replicated on the same axes, one
    all-reduce per axis a (size n): the ring moves ``2 (n-1)/n x local`` bytes at ``beta_a``, and the
    chunk's latency ``alpha_a`` is shared by the bytes in it, so this parameter pays
    ``alpha_a x min(1, local / bucket_bytes)``.
    """
    used = spec.used_axes()
    share = min(1.0, local / bucket_bytes)
    return sum(alpha * share + 2 * (n - 1) / n * local * beta
               for a, n in enumerate(cluster.mesh_shape) if n > 1 and a not in used
               for alpha, beta in (cluster.link(a),))


def price(node: fx.Node, out: ShardingSpec | None, inputs: Sequence[ShardingSpec | None],
          cluster: ClusterInfo, pricing: Pricing | None = None) -> Strategy:
    """The Strategy ``out = inputs`` of ``node`` with its compute time, own comm time and memory."""
    mesh = cluster.mesh_shape
    pricing = pricing if pricing is not None else Pricing()
    op = node.meta.get("op")
    tm = node.meta.get("tensor")
    inputs = tuple(inputs)
    out = out if out is not None else ShardingSpec(())
    if node.op == "get_attr" or op in STORAGE_OPS:
        local = local_bytes(tm, out, mesh)
        is_param = op == "param" and getattr(tm, "requires_grad", True)
        factors = state_factors(tm.dtype, pricing.optimizer) if is_param else (float(itemsize(tm.dtype)), 0.0, 0.0)
        sync = grad_sync_time(local, out, cluster, pricing.bucket_bytes) if is_param else 0.0
        return Strategy(out, inputs, 0.0, sync,
                        local / itemsize(tm.dtype) * sum(factors))
    if node.op == "placeholder":
        return Strategy(out, inputs, 0.0, 0.0, local_bytes(tm, out, mesh))
    if node.op == "output" or tm is None:
        return Strategy(out, inputs, 0.0, 0.0, 0.0)

    profile = node.meta.get("profile")
    in_nodes = node.all_input_nodes
    in_metas = [n.meta.get("tensor") if s is not None else None for n, s in zip(in_nodes, inputs)]
    needs_grad = any(t is not None and t.requires_grad for t in (tm if is_tuple_meta(tm) else (tm,)))

    # compute: the slower of FLOPs and memory traffic, on the local shard
    flops = (profile.fwd_flops + profile.bwd_flops) * work_fraction((out, *inputs), mesh) if profile else 0.0
    if has(op, Prop.VIEW):
        traffic = 0.0
    else:
        traffic = local_bytes(tm, out, mesh) + sum(local_bytes(t, s, mesh) for t, s in zip(in_metas, inputs))
        traffic *= 3 if needs_grad else 1
    # a tuple output may hold no tensor at all (``x.shape``'s meta is one None per dimension): no FLOPs then
    first = next((t for t in tm if t is not None), None) if is_tuple_meta(tm) else tm
    rate = cluster.flops_for(first.dtype) * cluster.efficiency if first is not None else float("inf")
    compute = max(flops / rate, traffic / (cluster.mem_bandwidth * cluster.efficiency))

    memory = saved_local_bytes(node, out, inputs, mesh)
    return Strategy(out, inputs, compute, cross_entropy_comm(node, inputs, cluster), memory)


def saved_share(node: fx.Node, out: ShardingSpec, inputs: Sequence[ShardingSpec | None], mesh) -> float:
    """Local / global bytes of the activations ``node`` reads under ``out = inputs`` (its output's, when it
    reads none): how its private saved bytes (norm statistics, masks) shrink on one device."""
    acts = [(n.meta.get("tensor"), s) for n, s in zip(node.all_input_nodes, inputs)
            if s is not None and n.meta.get("tensor") is not None and n.meta.get("op") not in STORAGE_OPS
            and n.op != "get_attr"]
    acts = acts or [(node.meta.get("tensor"), out)]
    total = sum(_global_bytes(t) for t, _ in acts)
    return sum(local_bytes(t, s, mesh) for t, s in acts) / total if total else 1.0


def saved_local_bytes(node: fx.Node, out: ShardingSpec, inputs: Sequence[ShardingSpec | None], mesh,
                      through_views: bool = True) -> float:
    """The bytes ``node`` saves for backward on one device under ``out = inputs`` (module docstring).

    ``through_views=False`` leaves out the storages it reaches only through views: their bytes depend on
    the root's strategy, not this node's, and the ILP prices them on the root (``memory.py``,
    ``view_saved_roots``); with True they are estimated as the root's bytes x the view's local share."""
    profile, storage = node.meta.get("profile"), node.meta.get("storage")
    if profile is None or not profile.saved_bytes:
        return 0.0
    share = saved_share(node, out, inputs, mesh)
    if storage is None or (not storage.saves and not storage.private):  # not replayed: the rule's figure
        return profile.saved_bytes * share
    total = storage.private * share
    for root in storage.first:
        total += _root_local_bytes(node, root, out, inputs, mesh, share, through_views)
    return total


def saved_signature(node: fx.Node) -> tuple:
    """Everything ``saved_local_bytes(node, out, inputs, mesh, through_views=False)`` reads besides the specs:
    nodes with equal signatures (a repeated layer's) save equal bytes under equal strategies."""
    profile, storage = node.meta.get("profile"), node.meta.get("storage")
    if profile is None or not profile.saved_bytes:
        return ()
    args = node.all_input_nodes
    ins = tuple((shape_key(a.meta.get("tensor")), a.meta.get("op") in STORAGE_OPS or a.op == "get_attr") for a in args)
    head = (profile.saved_bytes, ins, shape_key(node.meta.get("tensor")))
    if storage is None:
        return head
    reads = tuple((root[1], root[0] == node.name,
                   tuple((a.meta.get("storage") is not None and root in a.meta["storage"].roots,
                          a.name == root[0] and not is_tuple_meta(a.meta.get("tensor"))) for a in args))
                  for root in storage.first)
    return (*head, storage.private, bool(storage.saves), reads)


def shape_key(tm) -> tuple | None:
    """A hashable key of a tensor's (or a tuple of tensors') shape and dtype."""
    if tm is None:
        return None
    if is_tuple_meta(tm):
        return tuple(shape_key(t) for t in tm)
    return tuple(tm.shape), tm.dtype


def view_saved_roots(node: fx.Node) -> list[tuple]:
    """The storages ``node`` is the first to save that it reaches only through views of their roots (or
    not through its inputs at all): their bytes are the root's, in the root's own spec."""
    storage = node.meta.get("storage")
    if storage is None or node.meta.get("profile") is None or not node.meta["profile"].saved_bytes:
        return []
    return [root for root in storage.first if _reads(node, root) == "view"]


def _reads(node: fx.Node, root) -> str:
    """How ``node`` reaches storage ``root``: its own output ("own"), an input that is the root ("direct"),
    through views ("view")."""
    if root[0] == node.name:
        return "own"
    for arg in node.all_input_nodes:
        st = arg.meta.get("storage")
        if st is not None and root in st.roots:
            return "direct" if arg.name == root[0] and not is_tuple_meta(arg.meta["tensor"]) else "view"
    return "view"


def _root_local_bytes(node: fx.Node, root, out, inputs, mesh, share: float, through_views: bool) -> float:
    name, i = root
    if name == node.name:  # its own output
        tm = node.meta["tensor"]
        return local_bytes(tm[i] if i is not None and is_tuple_meta(tm) else tm, out, mesh)
    for arg, spec in zip(node.all_input_nodes, inputs):
        st = arg.meta.get("storage")
        if st is None or root not in st.roots or spec is None:
            continue
        tm = arg.meta["tensor"]
        if arg.name == name and not is_tuple_meta(tm):  # read directly: its storage, or the copy this spec is
            return local_bytes(tm, spec, mesh)
        if not through_views:
            return 0.0
        whole = _global_bytes(tm)  # through views: the root's storage, shrunk as the view this node reads
        return _root_global_bytes(node, root) * (local_bytes(tm, spec, mesh) / whole if whole else 1.0)
    return _root_global_bytes(node, root) * share if through_views else 0.0


def _root_global_bytes(node: fx.Node, root) -> float:
    graph = node.graph
    by_name = graph.__dict__.get("_autopar_nodes")
    if by_name is None or root[0] not in by_name:
        by_name = graph.__dict__["_autopar_nodes"] = {n.name: n for n in graph.nodes}
    tm = by_name[root[0]].meta["tensor"]
    return _global_bytes(tm[root[1]] if root[1] is not None and is_tuple_meta(tm) else tm)


def cross_entropy_comm(node: fx.Node, inputs: Sequence[ShardingSpec | None], cluster: ClusterInfo) -> float:
    """The collectives cross-entropy issues itself; every other op communicates only on edges: 0.

    - its class dim split (runtime/vocab_parallel.py): on each vocab axis, two all-reduces in forward (the
      N_local row maxima, then the sums of exp and the target logits, 2 N_local values) and one of the
      output's gradient in backward;
    - its batch split with ``reduction="mean"`` (localize.ShardedCrossEntropy): on each axis splitting the
      target's batch, one all-reduce of the count of targets that are not ignored (one value, no gradient);
      on an axis where the target is replicated the rank counts the whole batch's itself.
    """
    if node.meta.get("op") != "cross_entropy" or not inputs or inputs[0] is None or not inputs[0].ndim:
        return 0.0
    spec, tm = inputs[0], node.all_input_nodes[0].meta["tensor"]
    mesh = cluster.mesh_shape
    reduction = node.kwargs.get("reduction", "mean")
    seconds = 0.0
    if spec.ndim == 2:
        rows = tm.shape[0] / spec.shards(0, mesh) * itemsize(tm.dtype)  # bytes of N_local values
        out = rows if reduction == "none" else itemsize(tm.dtype)
        seconds += sum(3 * alpha + 2 * (mesh[a] - 1) / mesh[a] * (3 * rows + out) * beta
                       for a in spec.dims[1] if mesh[a] > 1 for alpha, beta in (cluster.link(a),))
    if reduction == "mean":
        counted = inputs[1].dims[0] if len(inputs) > 1 and inputs[1] is not None and inputs[1].ndim else ()
        seconds += sum(alpha + 2 * (mesh[a] - 1) / mesh[a] * itemsize(tm.dtype) * beta
                       for a in counted if mesh[a] > 1 for alpha, beta in (cluster.link(a),))
    return seconds
