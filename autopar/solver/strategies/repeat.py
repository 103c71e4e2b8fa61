"""repeat, repeat_interleave: ops that copy elements (rotary tables, ALiBi, relative positions).

repeat (x, sizes): ``y = x tiled sizes[d] times along each dim d`` (sizes may add leading dims). Per
mesh axis, for an output dim d with factor r = sizes[d]:

- r = 1 (and x has the dim): split y and x on d alike, the sizes unchanged;
- r > 1 (or a new leading dim): y's k blocks along d are r/k whole copies of x each, so split y on d
  with x replicated, each rank tiling r/k times (``runtime/localize.py``; offered when k divides r,
  ``repeat_check``).

repeat_interleave (x, r, dim): ``y[.., i, ..] = x[.., i // r, ..]`` along ``dim``: the k-th block of y
along ``dim`` is the interleave of the k-th block of x, so every dim (``dim`` included) splits on x
and y alike, with the same r.

Both are linear: a partial x gives a partial y.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, register_check, shape
from autopar.spec import ShardingSpec


@register("repeat")
def repeat_rule(node: fx.Node) -> list[AxisOption]:
    x, sizes = node.args[0], node.args[1]
    out, new = shape(node), len(node.args[1]) - len(shape(x))
    opts = []
    for d, r in enumerate(sizes):
        if out[d] <= 1:
            continue
        opts.append(AxisOption(d, ((x, d - new if r == 1 and d >= new else R),)))
    return opts + [AxisOption(P, ((x, P),))]


@register_check("repeat")
def repeat_check(node: fx.Node, specs: Sequence[ShardingSpec | None], mesh_shape: Sequence[int]) -> bool:
    """A tiled dim split k ways with x whole: every rank tiles sizes[d] / k times, so k divides sizes[d]."""
    sizes, out = node.args[1], specs[0]
    return all(sizes[d] % out.shards(d, mesh_shape) == 0 for d in range(len(sizes)) if out.dims[d] and sizes[d] > 1)


@register("repeat_interleave")
def repeat_interleave_rule(node: fx.Node) -> list[AxisOption]:
    x, out = node.args[0], shape(node)
    return [AxisOption(d, ((x, d),)) for d in range(len(out)) if shape(x)[d] > 1] + [AxisOption(P, ((x, P),))]
