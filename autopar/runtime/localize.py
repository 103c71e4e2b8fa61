"""Rewrite one op's arguments from global to local shapes, per canonical op key.

Every rule receives the node's new (local) args and returns new args, or raises a
NodeError when a chosen strategy cannot run locally (which the strategies should prevent).
Ops not listed here run unchanged: their arguments do not depend on how tensors are split.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from autopar.errors import NodeError
from autopar.spec import ShardingSpec
from autopar.tracer.ops import CREATION_OPS, UNIFORM_CREATION


def local_args(node: fx.Node, strategy, args: tuple, mesh_shape: tuple[int, ...]) -> tuple:
    """``args`` of ``node`` under its chosen ``strategy`` (already mapped into the new graph), shapes made local."""
    op = node.meta["op"]
    out_spec: ShardingSpec = strategy.output
    if op in ("view", "expand"):
        shape = tuple(node.meta["tensor"].shape)
        return (args[0], out_spec.local_shape(shape, mesh_shape), *args[2:])
    if op == "split":
        x, sizes, dim = args[0], args[1], args[2]
        in_spec = strategy.inputs[0]
        k = in_spec.shards(dim, mesh_shape)
        if isinstance(sizes, int):
            return (x, sizes // k, dim, *args[3:])
        if any(s % k for s in sizes):
            raise NodeError(node, f"split sizes {sizes} do not divide by the {k} shards of dim {dim}")
        return (x, [s // k for s in sizes], dim, *args[3:])
    if op in ("conv2d", "conv1d") and args[6] > 1:  # a grouped conv split on channels runs its own groups
        return (*args[:6], args[6] // out_spec.shards(1, mesh_shape))
    if op == "slice":
        return (args[0], _local_index(node, args[1], strategy.inputs[0]))
    if op == "repeat":  # a tiled dim split k ways: each rank tiles sizes[d] / k times (strategies/repeat.py)
        sizes = tuple(r // out_spec.shards(d, mesh_shape) if r > 1 else r for d, r in enumerate(args[1]))
        return (args[0], sizes, *args[2:])
    if op == "group_norm" and out_spec.dims[1]:  # whole groups per rank
        return (args[0], args[1] // out_spec.shards(1, mesh_shape), *args[2:])
    if op in UNIFORM_CREATION and not out_spec.is_replicated():  # the same values on the local shape
        at = 1 if op.startswith("new_") else 0
        shape = out_spec.local_shape(tuple(node.meta["tensor"].shape), mesh_shape)
        return (*args[:at], shape, *args[at + 1:])
    if op in CREATION_OPS and not out_spec.is_replicated():
        raise NodeError(node, f"creation op with a sharded output {out_spec} is not supported",
                        stage="generating code for", hint="report this model: creation ops are planned replicated")
    return args


def local_group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """``F.group_norm`` without its training-mode refusal of a group of one value per sample-batch.

    That check multiplies the batch into its count, so a rank holding one sample of a batch the whole
    model runs (N split) or fewer groups (C split) can be refused a shape the single device accepts;
    each sample's groups are normalised alone, so the shard's values are the whole tensor's (fuzz 12086).
    """
    return torch.group_norm(x, num_groups, weight, bias, eps, torch.backends.cudnn.enabled)


def local_target(node: fx.Node, strategy):
    """The callable a rank runs for ``node``: its own target, except where torch's wrapper checks a shape
    the shard can fail while the whole tensor passes."""
    if node.meta.get("op") == "group_norm" and not strategy.output.is_replicated():
        return local_group_norm
    return node.target


def _local_index(node: fx.Node, index, in_spec: ShardingSpec):
    """Basic indexing: a sharded dim may only be taken whole (``slice(None)``)."""
    index = index if isinstance(index, tuple) else (index,)
    shape = node.all_input_nodes[0].meta["tensor"].shape
    out, dim = [], 0
    for item in index:
        if item is None:
            out.append(item)
            continue
        if dim < len(in_spec.dims) and in_spec.dims[dim]:
            if not (isinstance(item, slice) and item.step in (None, 1)
                    and (item.start or 0) == 0 and (item.stop is None or item.stop >= shape[dim])):
                raise NodeError(node, f"index {item} on dim {dim}, which is split ({in_spec})",
                                stage="generating code for")
            item = slice(None)
        out.append(item)
        dim += 1
    return tuple(out)


def mean_scale(node: fx.Node, strategy, mesh_shape: tuple[int, ...]) -> float:
    """A mean over split dims computes a local mean; times this factor it is a partial of the global mean.

    mean_global = sum_r sum(x_r) / N = sum_r mean(x_r) * (n_r / N) = sum_r mean(x_r) / k,
    where k is the number of shards across the reduced dims.
    """
    in_spec: ShardingSpec = strategy.inputs[0]
    args = node.args
    ndim = in_spec.ndim
    dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
    if dims is None or dims == () or dims == []:
        dims = range(ndim)
    dims = [dims] if isinstance(dims, int) else dims
    k = math.prod(in_spec.shards(d % ndim, mesh_shape) for d in dims)
    return 1.0 / k


class ShardedCrossEntropy(torch.nn.Module):
    """Cross-entropy over a batch split on mesh axes, giving a partial sum of the global loss.

    ``forward(logits, target, counted, **kwargs)``: ``target`` holds this rank's rows (those of its
    logits); ``counted`` is the target as the plan holds it, split on ``count_axes`` only (replicated
    on a batch axis of the logits where the plan keeps the whole batch's targets, as it does for
    targets taken from the inputs).

    reduction='mean': loss = sum_r sum_i ce(x_ri) / N_valid, with N_valid the count of ``counted``'s
    targets != ignore_index, all-reduced over ``count_axes`` (no gradient flows through the count; on
    the other axes every rank already counts the whole batch's). reduction='sum': the local sum is
    already the partial. reduction='none': unchanged.
    """

    def __init__(self, mesh, count_axes: tuple[int, ...]) -> None:
        super().__init__()
        self.mesh, self.count_axes = mesh, count_axes

    def forward(self, logits, target, counted, *args, **kwargs):
        reduction = kwargs.pop("reduction", "mean")
        if args:
            raise TypeError("canonical cross_entropy takes (logits, target) and keyword arguments")
        if reduction != "mean":
            return torch.nn.functional.cross_entropy(logits, target, reduction=reduction, **kwargs)
        if kwargs.get("weight") is not None:
            raise NotImplementedError("batch-sharded cross_entropy with class weights")
        ignore = kwargs.get("ignore_index", -100)
        local = torch.nn.functional.cross_entropy(logits, target, reduction="sum", **kwargs)
        count = (counted != ignore).sum().to(local.dtype)
        for axis in self.count_axes:
            if self.mesh.size(axis) > 1:
                torch.distributed.all_reduce(count, group=self.mesh.group(axis))
        return local / count

    def extra_repr(self) -> str:
        return f"count_axes={self.count_axes}"


def vocab_parallel_module(node: fx.Node, strategy, mesh) -> tuple[str, torch.nn.Module] | None:
    """``(name, module)`` to run ``node`` vocabulary-parallel, or None when its vocabulary is not split.

    embedding with W (V, h) split on dim 0: this rank owns rows [k * V/K, (k+1) * V/K), k its shard
    index on dim 0; cross_entropy with logits (N, C) split on dim 1: classes [k * C/K, (k+1) * C/K).
    """
    from autopar.runtime.vocab_parallel import VocabParallelCrossEntropy, VocabParallelEmbedding

    op = node.meta.get("op")
    mesh_shape, coord = tuple(mesh.mesh_shape), mesh.coord
    if op == "embedding" and strategy.inputs[1] is not None and strategy.inputs[1].dims[0]:
        spec, vocab = strategy.inputs[1], node.all_input_nodes[1].meta["tensor"].shape[0]
        rows = vocab // spec.shards(0, mesh_shape)
        return f"vocab_{node.name}", VocabParallelEmbedding(spec.shard_index(0, mesh_shape, coord) * rows, rows, vocab)
    if op == "cross_entropy" and strategy.inputs[0].ndim == 2 and strategy.inputs[0].dims[1]:
        spec, classes = strategy.inputs[0], node.all_input_nodes[0].meta["tensor"].shape[1]
        start = spec.shard_index(1, mesh_shape, coord) * (classes // spec.shards(1, mesh_shape))
        return f"vocab_{node.name}", VocabParallelCrossEntropy(mesh, spec.dims[1], spec.dims[0], start)
    return None
