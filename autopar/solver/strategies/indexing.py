"""index (advanced indexing), gather, topk: ops that read elements at positions held in tensors.

index: ``y = x[i_0, ..., i_{m-1}]`` with m integer index tensors broadcast to a shape B (nb dims):
``y[b, r] = x[i_0[b], ..., i_{m-1}[b], r]``, y of shape B + x.shape[m:]. Per mesh axis:

- split a batch dim j of y (j < nb): each index tensor is split where it has that dim (R where it
  is broadcast), x stays replicated: each rank looks its own positions up in the whole x;
- split a trailing dim d >= m of x: y is split on ``nb + d - m``, the indices replicated;
- y is linear in x: a partial (floating-point) x with replicated indices gives a partial y.

Other layouts (slices or None mixed with tensors) get no rule yet and fall back to replicated.

gather: ``y[.., j, ..] = x[.., index[.., j, ..], ..]`` along ``dim``, y of index's shape. Split ``dim``
on y and index with x replicated, or another dim d on x, index and y alike (when x and index have
the same size there); linear in x.

topk: (values, indices) along ``dim``: split any other dim; both outputs follow.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, broadcast_place, register, shape, tmeta
from autopar.solver.strategies.masks import arg


def _floating(node: fx.Node) -> bool:
    return tmeta(node).dtype.is_floating_point


@register("index")
def index_rule(node: fx.Node) -> list[AxisOption]:
    """y = x[i_0, ..., i_{m-1}] (tensor indices only): split y's batch dims (indices follow) or x's trailing dims."""
    x, index = node.args[0], node.args[1]
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, fx.Node) and shape(i) is not None for i in items):
        node.meta["fallback"] = True  # slices, None or Ellipsis beside tensor indices: no rule yet
        return []
    xs, out, m = shape(x), shape(node), len(items)
    nb = len(out) - (len(xs) - m)
    batch = out[:nb]
    opts = [AxisOption(j, ((x, R),) + tuple((i, broadcast_place(j, batch, shape(i))) for i in items))
            for j in range(nb) if out[j] > 1]
    opts += [AxisOption(nb + d - m, ((x, d),) + tuple((i, R) for i in items)) for d in range(m, len(xs)) if xs[d] > 1]
    if _floating(x):
        opts.append(AxisOption(P, ((x, P),) + tuple((i, R) for i in items)))
    return opts


@register("gather")
def gather_rule(node: fx.Node) -> list[AxisOption]:
    """y = gather(x, dim, index): split ``dim`` (x replicated) or a dim where x and index agree."""
    x, dim, index = node.args[0], arg(node, 1, "dim"), arg(node, 2, "index")
    xs, out = shape(x), shape(node)
    dim %= len(out)
    opts = []
    for d in range(len(out)):
        if out[d] <= 1:
            continue
        if d == dim:
            opts.append(AxisOption(d, ((x, R), (index, d))))
        elif xs[d] == out[d]:
            opts.append(AxisOption(d, ((x, d), (index, d))))
    if _floating(x):
        opts.append(AxisOption(P, ((x, P), (index, R))))
    return opts


@register("topk")
def topk_rule(node: fx.Node) -> list[AxisOption]:
    """(values, indices) = topk(x, k, dim): split any dim but ``dim``."""
    x = node.args[0]
    xs = shape(x)
    dim = arg(node, 2, "dim", -1) % len(xs)
    return [AxisOption(d, ((x, d),)) for d in range(len(xs)) if d != dim and xs[d] > 1]


def _whole(item, size: int) -> bool:
    return isinstance(item, slice) and range(*item.indices(size)) == range(size)


@register("setitem_copy")
def setitem_copy_rule(node: fx.Node) -> list[AxisOption]:
    """y = x with x[index] = value (basic index): split a dim the index takes whole; value follows it.

    Each rank assigns its own rows; a whole slice stays whole on a local shard (its stop is clamped).
    """
    x, index, value = node.args[:3]
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (fx.Node, list)) for i in items):
        node.meta["fallback"] = True  # advanced-index assignment: no rule yet
        return []
    xs = shape(x)
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded = []  # one item per x dim (plus None for new dims), Ellipsis expanded
    for i in items:
        expanded += [slice(None)] * (len(xs) - consumed) if i is Ellipsis else [i]
    expanded += [slice(None)] * (len(xs) - sum(1 for i in expanded if i is not None))
    result, whole, d = [], {}, 0  # x[index]'s shape; x dim -> its dim there when taken whole
    for i in expanded:
        if i is None:
            result.append(1)
            continue
        if isinstance(i, slice):
            if _whole(i, xs[d]):
                whole[d] = len(result)
            result.append(len(range(*i.indices(xs[d]))))
        d += 1
    vs = shape(value) if isinstance(value, fx.Node) else None
    return [AxisOption(d, ((x, d),) + (((value, broadcast_place(r, result, vs)),) if vs is not None else ()))
            for d, r in whole.items() if xs[d] > 1]
