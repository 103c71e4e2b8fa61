"""The small ops that build attention masks, positions and shifted labels.

Transformers' ``masking_utils`` and the position/label code of the models use scans, shifts
and pads along one dim, binary min/max, and factories reading another tensor's dtype:

- cumsum (x, dim): ``y[.., i, ..] = sum_{j<=i} x[.., j, ..]`` mixes only ``dim``: split the others.
  It is linear in x, so a partial x gives a partial y.
- diff (x, n, dim, prepend, append): ``y_i = x_{i+1} - x_i`` along ``dim`` (after concatenating
  prepend/append there): split the other dims, prepend/append alike (R where broadcast).
- pad (x, pad, mode, value): only the dims with nonzero padding change: split the others.
- min / max of two tensors: the elementwise ``minimum`` / ``maximum``. (The reductions
  ``min(x, dim)`` return (values, indices); a rule for them is not offered, they fall back.)
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import (
    AxisOption,
    P,
    broadcast_place,
    register,
    shape,
    split_options,
    tensor_args,
    tmeta,
)


def arg(node: fx.Node, i: int, name: str, default=None):
    """Argument ``i`` of ``node``, positional or by keyword ``name``."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _other_dims(out: tuple[int, ...], dim: int) -> list[int]:
    return [d for d in range(len(out)) if d != dim % len(out) and out[d] > 1]


@register("cumsum")
def cumsum_rule(node: fx.Node) -> list[AxisOption]:
    """y = cumsum(x, dim): split any dim but ``dim``; partial -> partial."""
    x, out = node.args[0], shape(node)
    dim = arg(node, 1, "dim")
    opts = [AxisOption(d, ((x, d),)) for d in _other_dims(out, dim)]
    if tmeta(x).dtype == tmeta(node).dtype:  # cumsum(bool) is an integer count: no partial bools
        opts.append(AxisOption(P, ((x, P),)))
    return opts


@register("diff")
def diff_rule(node: fx.Node) -> list[AxisOption]:
    """y = diff(cat(prepend, x, append), dim): split any dim but ``dim``, every tensor alike."""
    out = shape(node)
    dim = arg(node, 2, "dim", -1)
    operands = tensor_args(node)
    return [AxisOption(d, tuple((t, broadcast_place(d, out, shape(t))) for t in operands))
            for d in _other_dims(out, dim)]


@register("pad")
def pad_rule(node: fx.Node) -> list[AxisOption]:
    """y = pad(x, (l_last, r_last, l_prev, r_prev, ...)): split the dims not padded."""
    x, out = node.args[0], shape(node)
    pads = arg(node, 1, "pad")
    padded = {len(out) - 1 - i // 2 for i, p in enumerate(pads) if p}
    return [AxisOption(d, ((x, d),)) for d in range(len(out)) if d not in padded and out[d] > 1]


@register("min", "max")
def minmax_rule(node: fx.Node) -> list[AxisOption]:
    """min(a, b) / max(a, b) elementwise, broadcast: split any output dim. Reductions fall back."""
    operands = tensor_args(node)
    if len(node.args) < 2 or not isinstance(node.args[1], fx.Node) or shape(node.args[1]) is None:
        node.meta["fallback"] = True  # the (values, indices) reduction: no rule
        return []
    return split_options(shape(node), operands)
