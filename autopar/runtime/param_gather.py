"""Sharded parameters gathered in buckets: one all-gather for many weights, one reduce-scatter back.

A plan that stores a weight split on a mesh axis and uses it whole there (ZeRO-3 / FSDP) gathers it
before its first use. Gathered one by one, a GPT-2 block issues a collective per weight in forward and
another per weight in backward; FSDP2 issues one per block each way. Here the weights whose gather is
a single ``all_gather`` on the same axis, in the same dtype, are laid out in buckets of at most
``bucket_bytes`` gathered bytes, in the order forward first uses them (codegen's ``plan_gathers``):

- forward: every member's local shard is flattened into one buffer, that buffer is all-gathered (rank
  r's at row r), and each member's whole tensor is cut out of the rows and joined along its own
  split dim (the values ``AllGatherFwdReduceScatterBwd`` gives, member by member);
- backward (when every member's gradient has arrived: autograd calls the Function once): each whole
  gradient is cut along its dim into the ranks' pieces, the pieces are laid out as the forward
  buffer's rows, and one reduce-scatter leaves each rank the sum of its members' pieces.

The bucket is gathered at the first use of its first member, so a member is whole at most one bucket
earlier than one gathered alone; autograd then keeps each whole weight for backward, as it keeps a
weight gathered alone. Members used inside a recomputed region, or by Gemini's chunks, are left to
the per-weight path (a region recomputes its own gathers; a chunk may leave the device between ops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from autopar.runtime.collectives import _all_gather_tensor, _reduce_scatter_tensor
from autopar.tracer.meta import TensorMeta


def gathered_weight(node) -> bool:
    """A node whose gathers go in buckets: a trainable floating-point parameter, or the compute-dtype cast the
    tracer puts after one."""
    if node.meta.get("op") == "to" and node.args and len(node.all_input_nodes) == 1:
        return gathered_weight(node.all_input_nodes[0])
    tm = node.meta.get("tensor")
    return (node.op == "get_attr" and "param" in node.meta and isinstance(tm, TensorMeta) and tm.requires_grad
            and tm.dtype.is_floating_point)


def single_gather(sc, src, want, shape, itemsize: int, mesh_shape) -> tuple[int, int, float] | None:
    """(axis, dim, gathered bytes) when turning a weight laid out as ``src`` into ``want`` is one all-gather on a
    mesh axis of size > 1, the gathers that go in buckets (codegen's ``plan_gathers``, priced by the planner
    as their share of a bucket: solver/build.py); None otherwise."""
    steps = sc.plan(src, want, tuple(shape), itemsize)
    if len(steps) != 1 or steps[0].kind != "all_gather" or mesh_shape[steps[0].axis] == 1:
        return None
    return steps[0].axis, steps[0].dim, math.prod(want.local_shape(tuple(shape), mesh_shape)) * itemsize


@dataclass
class Bucket:
    """Members gathered together: (traced node, the spec it is gathered to, its split dim)."""

    index: int
    axis: int
    members: list = field(default_factory=list)
    nbytes: float = 0.0  # gathered bytes


def partition(candidates, bucket_bytes: float) -> list[Bucket]:
    """``candidates``: (node, wanted spec, axis, dim, dtype, gathered bytes) in order of first use. An open
    bucket per (axis, dtype) takes each candidate until it would pass ``bucket_bytes``; buckets of one member
    are dropped (gathered alone, nothing is gained)."""
    open_: dict[tuple, Bucket] = {}
    made: list[Bucket] = []  # in the order of their first members' first use
    for node, want, axis, dim, dtype, nbytes in candidates:
        bucket = open_.get((axis, dtype))
        if bucket is None or bucket.nbytes + nbytes > bucket_bytes:
            bucket = open_[(axis, dtype)] = Bucket(-1, axis)
            made.append(bucket)
        bucket.members.append((node, want, dim))
        bucket.nbytes += nbytes
    kept = [b for b in made if len(b.members) > 1]
    for i, b in enumerate(kept):
        b.index = i
    return kept


class _BucketGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, n: int, dims: tuple[int, ...], *shards):
        ctx.group, ctx.n, ctx.dims = group, n, dims
        # a member whose whole tensor never reaches the loss gets no gradient, as gathered alone (fuzz seed
        # 282: zeros made its weight's .grad a tensor where one device leaves it None)
        ctx.set_materialize_grads(False)
        ctx.shapes = [tuple(s.shape) for s in shards]
        flat = torch.cat([s.reshape(-1) for s in shards])
        rows = torch.empty((n, flat.numel()), dtype=flat.dtype, device=flat.device)
        _all_gather_tensor(rows.view(-1), flat, group=group)
        out, offset = [], 0
        for shape, dim in zip(ctx.shapes, dims):
            size = math.prod(shape)
            pieces = rows[:, offset:offset + size].reshape(n, *shape)  # (n, *local): rank r's piece at r
            out.append(pieces.movedim(0, dim).flatten(dim, dim + 1))
            offset += size
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        n, rows = ctx.n, []
        if all(g is None for g in grads):  # structural, so alike on every rank: no collective
            return (None, None, None, *(None for _ in grads))
        known = next(g for g in grads if g is not None)
        for g, shape, dim in zip(grads, ctx.shapes, ctx.dims):
            if g is None:  # a member whose whole tensor did not reach the loss
                rows.append(known.new_zeros((n, math.prod(shape))))
                continue
            rows.append(g.unflatten(dim, (n, shape[dim])).movedim(dim, 0).reshape(n, -1))
        send = torch.cat(rows, dim=1)
        mine = torch.empty(send.shape[1], dtype=send.dtype, device=send.device)
        _reduce_scatter_tensor(mine, send.view(-1), op=dist.ReduceOp.SUM, group=ctx.group)
        out, offset = [], 0
        for shape, g in zip(ctx.shapes, grads):  # the same collective on every rank; None where no gradient came
            size = math.prod(shape)
            out.append(mine[offset:offset + size].view(shape) if g is not None else None)
            offset += size
        return (None, None, None, *out)


class BucketGather(torch.nn.Module):
    """``self.gather_<k>(*shards)``: the whole tensors of a bucket's members (module docstring)."""

    def __init__(self, mesh, axis: int, dims: tuple[int, ...], names: tuple[str, ...]) -> None:
        super().__init__()
        self.mesh, self.axis, self.dims, self.names = mesh, axis, dims, names

    def forward(self, *shards):
        return _BucketGather.apply(self.mesh.group(self.axis), self.mesh.size(self.axis), self.dims, *shards)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, members={len(self.dims)}"
