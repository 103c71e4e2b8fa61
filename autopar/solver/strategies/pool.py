"""max_pool2d, avg_pool2d, adaptive_avg_pool2d over the last two (spatial) dims of x (N, C, H, W),
adaptive_avg_pool1d over the last dim of x (N, C, L), interpolate (resampling of the spatial dims).

Pooling mixes only H and W: split N or C (any dim before the last two) on x and y alike. Average
pools are linear in x (a weighted sum per window), so a partial x gives a partial y; max is not.
interpolate (nearest, linear, bilinear, bicubic, area, with or without antialias) is a fixed
weighted sum of input pixels per output pixel: linear too; it mixes only the dims after N and C.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, register, shape


@register("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
def pool_rule(node: fx.Node) -> list[AxisOption]:
    x, out = node.args[0], shape(node)
    opts = [AxisOption(d, ((x, d),)) for d in range(len(out) - 2) if out[d] > 1]
    if node.meta.get("op") != "max_pool2d":
        opts.append(AxisOption(P, ((x, P),)))
    return opts


@register("adaptive_avg_pool1d")
def pool1d_rule(node: fx.Node) -> list[AxisOption]:
    x, out = node.args[0], shape(node)
    return [AxisOption(d, ((x, d),)) for d in range(len(out) - 1) if out[d] > 1] + [AxisOption(P, ((x, P),))]


@register("interpolate")
def interpolate_rule(node: fx.Node) -> list[AxisOption]:
    """y = interpolate(x (N, C, *S)): split N or C; partial -> partial."""
    x, out = node.args[0], shape(node)
    return [AxisOption(d, ((x, d),)) for d in range(min(2, len(out))) if out[d] > 1] + [AxisOption(P, ((x, P),))]
