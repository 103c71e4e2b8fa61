"""index (advanced indexing), gather, topk: ops that read elements at positions held in tensors.

index: ``y = x[i_0, ..., i_{m-1}]`` with m integer index tensors broadcast to a shape B (nb dims):
``y[b, r] = x[i_0[b], ..., i_{m-1}[b], r]``, y of shape B + x.shape[m:]. Per mesh axis:

- split a batch dim j of y (j < nb): each index tensor is split where it has that dim (R where it
  is broadcast), x stays replicated: each rank looks its own positions up in the whole x;
- split a trailing dim d >= m of x: y is split on ``nb + d - m``, the indices replicated;
- y is linear in x: a partial (floating-point) x with replicated indices gives a partial y.

Slices, None, Ellipsis and ints may stand beside the advanced indices (Falcon's ``qkv[..., [-2], :]``,
LeViT's ``biases[:, idxs]``): a whole slice's dim splits on x and y alike; B's dims split only when
every advanced index is a tensor (a list is a constant every rank holds whole). A bool mask (a
data-dependent shape) has no rule.

gather: ``y[.., j, ..] = x[.., index[.., j, ..], ..]`` along ``dim``, y of index's shape. Split ``dim``
on y and index with x replicated, or another dim d on x, index and y alike (when x and index have
the same size there); linear in x.

topk: (values, indices) along ``dim``: split any other dim; both outputs follow.

scatter (x, dim, index, src|value): ``y = x`` with ``y[.., index[.., j, ..], ..] = src[.., j, ..]``
along ``dim``: split a dim d != dim where x, index (and src) have the same size, all alike.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, broadcast_place, register, shape, tmeta
from autopar.solver.strategies.masks import arg


def _floating(node: fx.Node) -> bool:
    return tmeta(node).dtype.is_floating_point


def _index_layout(x_shape, out_shape, index):
    """(x dim -> y dim of each whole slice, y dims of the broadcast index shape B, tensor indices) of
    ``x[index]``, or None when the index has forms this rule does not follow (a bool mask, slices with
    tensor bounds). Torch's rule: the advanced indices (tensors, lists, and ints beside them) broadcast
    to B; B's dims stand where the advanced block is when it is contiguous, else first."""
    items = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded = []
    for i in items:
        expanded += [slice(None)] * (len(x_shape) - consumed) if i is Ellipsis else [i]
    expanded += [slice(None)] * (len(x_shape) - sum(1 for i in expanded if i is not None))
    advanced = [k for k, i in enumerate(expanded) if isinstance(i, (fx.Node, list, int)) and not isinstance(i, bool)]
    for i in expanded:
        if isinstance(i, fx.Node) and (shape(i) is None or tmeta(i).dtype == torch.bool):
            return None
        if isinstance(i, slice) and any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)):
            return None
    if any(isinstance(i, (bool, torch.Tensor)) for i in expanded) or not advanced:
        return None
    nb = len(out_shape) - sum(1 for i in expanded if i is None or isinstance(i, slice))
    block = advanced == list(range(advanced[0], advanced[-1] + 1))
    whole, b_at, d_in, d_out = {}, 0 if not block else None, 0, nb if not block else 0
    for k, i in enumerate(expanded):
        if block and k == advanced[0]:
            b_at, d_out = d_out, d_out + nb
        if i is None:
            d_out += 1
        elif isinstance(i, slice):
            if _whole(i, x_shape[d_in]):
                whole[d_in] = d_out
            d_in, d_out = d_in + 1, d_out + 1
        else:
            d_in += 1
    tensors = [i for i in expanded if isinstance(i, fx.Node)]
    splittable_b = not any(isinstance(i, list) for i in expanded)  # constant lists cannot be cut per rank
    return whole, (list(range(b_at, b_at + nb)) if splittable_b else []), tensors


@register("index")
def index_rule(node: fx.Node) -> list[AxisOption]:
    """y = x[index] with advanced indices: split a whole-sliced dim (x and y alike, the indices whole) or a
    dim of the broadcast index shape (the index tensors where they have it, x whole)."""
    x, index = node.args[0], node.args[1]
    xs, out = shape(x), shape(node)
    layout = _index_layout(xs, out, index)
    if layout is None:
        node.meta["fallback"] = True  # a bool mask or tensor slice bounds: no rule
        return []
    whole, b_dims, tensors = layout
    batch = tuple(out[j] for j in b_dims)
    opts = [AxisOption(j, ((x, R),) + tuple((i, broadcast_place(b, batch, shape(i))) for i in tensors))
            for b, j in enumerate(b_dims) if out[j] > 1]
    opts += [AxisOption(j, ((x, d),) + tuple((i, R) for i in tensors)) for d, j in whole.items() if xs[d] > 1]
    if _floating(x):
        opts.append(AxisOption(P, ((x, P),) + tuple((i, R) for i in tensors)))
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


@register("scatter")
def scatter_rule(node: fx.Node) -> list[AxisOption]:
    """y = x.scatter(dim, index, src): split a dim other than ``dim`` that x, index and src share."""
    x, dim, index, src = node.args[:4]
    xs = shape(x)
    others = [t for t in (index, src) if isinstance(t, fx.Node) and shape(t) is not None]
    return [AxisOption(d, ((x, d),) + tuple((t, d) for t in others)) for d in range(len(xs))
            if d != dim and xs[d] > 1 and all(shape(t)[d] == xs[d] for t in others)]
