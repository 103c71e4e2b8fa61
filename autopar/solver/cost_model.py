"""Costs of one Strategy: seconds and bytes per device, never mixed.

For an op node with global profile (F_fwd, F_bwd FLOPs, saved bytes M) and a strategy whose
specs split the work over the mesh axes A_s (the axes on which some tensor of the strategy is
split; on an axis where tensors are only replicated or partial every rank does the full work):

    f        = 1 / prod_{a in A_s} n_a                        (share of the work on one device)
    compute  = max((F_fwd + F_bwd) f / (peak(dtype) e),  B / (bandwidth e))
    B        = (sum of local input bytes + local output bytes) x (3 if a gradient flows, else 1)
               (backward reads the output grad and the inputs, writes the input grads);
               views (view, permute, expand, slice, split, getitem) move no bytes
    memory   = M x (local / global bytes of the node's activation inputs)   (saved for backward)

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
    return sum(cluster.alpha[a] * share + 2 * (n - 1) / n * local * cluster.beta[a]
               for a, n in enumerate(cluster.mesh_shape) if n > 1 and a not in used)


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
    first = next(t for t in tm if t is not None) if is_tuple_meta(tm) else tm
    compute = max(flops / (cluster.flops_for(first.dtype) * cluster.efficiency),
                  traffic / (cluster.mem_bandwidth * cluster.efficiency))

    # memory: saved bytes, scaled like the activations the op reads
    memory = 0.0
    if profile and profile.saved_bytes:
        acts = [(t, s) for n, t, s in zip(in_nodes, in_metas, inputs)
                if t is not None and n.meta.get("op") not in STORAGE_OPS and n.op != "get_attr"]
        acts = acts or [(tm, out)]
        total = sum(_global_bytes(t) for t, _ in acts)
        frac = sum(local_bytes(t, s, mesh) for t, s in acts) / total if total else 1.0
        memory = profile.saved_bytes * frac
    return Strategy(out, inputs, compute, vocab_parallel_comm(node, inputs, cluster), memory)


def vocab_parallel_comm(node: fx.Node, inputs: Sequence[ShardingSpec | None], cluster: ClusterInfo) -> float:
    """Cross-entropy with its class dim split (runtime/vocab_parallel.py): on each vocab axis, two
    all-reduces in forward (the N_local row maxima, then the sums of exp and the target logits, 2 N_local
    values) and one of the output's gradient in backward. Every other op communicates only on edges: 0."""
    if node.meta.get("op") != "cross_entropy" or not inputs or inputs[0] is None or inputs[0].ndim != 2:
        return 0.0
    spec, tm = inputs[0], node.all_input_nodes[0].meta["tensor"]
    mesh = cluster.mesh_shape
    rows = tm.shape[0] / spec.shards(0, mesh) * itemsize(tm.dtype)  # bytes of N_local values
    out = rows if node.kwargs.get("reduction", "mean") == "none" else itemsize(tm.dtype)
    return sum(3 * cluster.alpha[a] + 2 * (mesh[a] - 1) / mesh[a] * (3 * rows + out) * cluster.beta[a]
               for a in spec.dims[1] if mesh[a] > 1)
