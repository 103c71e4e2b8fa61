"""sum, mean, amax, amin over ``dims`` (x, dims, keepdim).

Split a kept dim: the output is split on the same dim (renumbered when dims are dropped).
Split a reduced dim: sum/mean give a partial output (each rank reduces its shard; for mean the
runtime scales by local/global count), amax/amin are not sums, so that is not offered.
sum and mean are linear: a partial input gives a partial output.
argmax, argmin (x, dim|None, keepdim): the position of the extreme along ``dim``: split any other
dim (of the flattened x, with dim None: none).
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, register, shape


def _reduced(node: fx.Node) -> tuple[set[int], bool]:
    """(reduced dims of the input, keepdim)."""
    ndim = len(shape(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", None)
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None or dims == () or dims == []:
        dims = range(ndim)
    elif isinstance(dims, int):
        dims = [dims]
    return {d % ndim for d in dims} if ndim else set(), bool(keepdim)


def _options(node: fx.Node, linear: bool) -> list[AxisOption]:
    x = node.args[0]
    xs = shape(x)
    reduced, keepdim = _reduced(node)
    opts, out_dim = [], 0
    for d in range(len(xs)):
        if d in reduced:
            if linear and xs[d] > 1:
                opts.append(AxisOption(P, ((x, d),)))
            out_dim += keepdim
            continue
        if xs[d] > 1:
            opts.append(AxisOption(out_dim, ((x, d),)))
        out_dim += 1
    if linear:
        opts.append(AxisOption(P, ((x, P),)))
    return opts


@register("sum", "mean")
def sum_rule(node: fx.Node) -> list[AxisOption]:
    return _options(node, linear=True)


@register("amax", "amin")
def amax_rule(node: fx.Node) -> list[AxisOption]:
    return _options(node, linear=False)


@register("argmax", "argmin")
def argmax_rule(node: fx.Node) -> list[AxisOption]:
    x, dim, keepdim = node.args[:3]
    xs = shape(x)
    if dim is None:
        return []
    return [AxisOption(d if keepdim or d < dim else d - 1, ((x, d),)) for d in range(len(xs)) if d != dim and xs[d] > 1]
