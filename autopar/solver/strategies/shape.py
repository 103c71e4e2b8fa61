"""view, permute, expand, split, getitem, slice, cat, stack: ops that only move elements.

All of them are linear, so a partial input gives a partial output. A split dim maps to the
output dim its elements land in; where no dim carries it whole, the split is not offered
(all-replicate always is). ``contiguous`` is a cast (pointwise.py).

view (b, s, h) -> (b*s, h): dims group into merges and splits with equal products; a split on
the leading (major) dim of a group maps to a split on the leading dim of the other side: the
k-th contiguous block of the flattened group is the k-th block of either leading dim, as long
as k divides both (the expansion checks divisibility on both sides). Size-1 dims are skipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, is_tuple_meta, register, shape, tmeta


def view_groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Groups of (src dims, dst dims) with equal products, size-1 dims left out.

    ``view_groups((4, 8, 6), (32, 6)) == [([0, 1], [0]), ([2], [1])]``.
    """
    a = [d for d, n in enumerate(src) if n != 1]
    b = [d for d, n in enumerate(dst) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        ga, gb = [a[i]], [b[j]]
        pa, pb = src[a[i]], dst[b[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                ga.append(a[i]); pa *= src[a[i]]; i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                gb.append(b[j]); pb *= dst[b[j]]; j += 1  # noqa: E702
            else:
                return groups
        groups.append((ga, gb))
    return groups


def _partial(x: fx.Node) -> AxisOption:
    return AxisOption(P, ((x, P),))


@register("view")
def view_rule(node: fx.Node) -> list[AxisOption]:
    x = node.args[0]
    groups = view_groups(shape(x), shape(node))
    return [AxisOption(gb[0], ((x, ga[0]),)) for ga, gb in groups] + [_partial(x)]


@register("permute")
def permute_rule(node: fx.Node) -> list[AxisOption]:
    """y.dim(i) = x.dim(dims[i])."""
    x, dims = node.args[0], node.args[1]
    nd = len(shape(x))
    return [AxisOption(i, ((x, d % nd),)) for i, d in enumerate(dims) if shape(x)[d % nd] > 1] + [_partial(x)]


@register("expand")
def expand_rule(node: fx.Node) -> list[AxisOption]:
    """Dims align from the right; an expanded dim (size 1 -> n) may be split on the output with x replicated."""
    x = node.args[0]
    xs, out = shape(x), shape(node)
    off = len(out) - len(xs)
    opts = []
    for d in range(len(out)):
        if out[d] > 1:
            kept = d >= off and xs[d - off] == out[d]
            opts.append(AxisOption(d, ((x, d - off if kept else R),)))
    return opts + [_partial(x)]


@register("split")
def split_rule(node: fx.Node) -> list[AxisOption]:
    """Every piece gets the same spec: split any dim but the one being cut."""
    x, dim = node.args[0], node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    xs = shape(x)
    dim %= len(xs)
    return [AxisOption(d, ((x, d),)) for d in range(len(xs)) if d != dim and xs[d] > 1] + [_partial(x)]


@register("getitem")
def getitem_rule(node: fx.Node) -> list[AxisOption]:
    """Element i of a tuple-valued node: the element keeps the tuple's spec."""
    seq, out = node.args[0], shape(node)
    if out is None or not is_tuple_meta(tmeta(seq)):
        return []
    return [AxisOption(d, ((seq, d),)) for d in range(len(out)) if out[d] > 1] + [_partial(seq)]


def _full(s, size: int) -> bool:
    return (s.start in (None, 0)) and (s.stop is None or s.stop >= size) and (s.step in (None, 1))


@register("slice")
def slice_rule(node: fx.Node) -> list[AxisOption]:
    """x[index]: dims indexed by a full slice keep their split; ints drop a dim, None adds one."""
    x, index = node.args[0], node.args[1]
    index = index if isinstance(index, tuple) else (index,)
    xs = shape(x)
    opts, d_in, d_out = [], 0, 0
    for item in index:
        if item is None:
            d_out += 1
        elif isinstance(item, slice):
            if _full(item, xs[d_in]) and xs[d_in] > 1:
                opts.append(AxisOption(d_out, ((x, d_in),)))
            d_in, d_out = d_in + 1, d_out + 1
        elif isinstance(item, int):
            d_in += 1
        else:
            return []  # tensor indices belong to "index"
    for rest in range(d_in, len(xs)):  # trailing dims not indexed are whole
        if xs[rest] > 1:
            opts.append(AxisOption(d_out + rest - d_in, ((x, rest),)))
    return opts + [_partial(x)]


@register("cat", "stack")
def cat_rule(node: fx.Node) -> list[AxisOption]:
    """cat: split any dim but ``dim`` on every input alike; stack: input dim d is output dim d (+1 after ``dim``)."""
    tensors = [t for t in node.args[0] if isinstance(t, fx.Node)]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = shape(node)
    dim %= len(out)
    stack = node.meta.get("op") == "stack"
    opts = []
    for d in range(len(shape(tensors[0]))):
        out_d = d + 1 if stack and d >= dim else d
        if (stack or d != dim) and out[out_d] > 1:
            opts.append(AxisOption(out_d, tuple((t, d) for t in tensors)))
    opts.append(AxisOption(P, tuple((t, P) for t in tensors)))
    return opts


@register("roll")
def roll_rule(node: fx.Node) -> list[AxisOption]:
    """y = roll(x, shifts, dims) (Swin's shifted windows): split any dim not rolled; partial -> partial."""
    x, dims = node.args[0], node.args[2]
    xs = shape(x)
    return [AxisOption(d, ((x, d),)) for d in range(len(xs)) if d not in dims and xs[d] > 1] + [_partial(x)]
