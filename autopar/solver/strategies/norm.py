"""layer_norm, rms_norm, group_norm, softmax, log_softmax: split only the dims the op does not mix.

layer_norm / rms_norm normalise over the trailing ``len(normalized_shape)`` dims of x: the
leading dims may be split (x and y alike); weight and bias stay replicated. softmax mixes
only ``dim``. None of them is linear, so no partial inputs.

group_norm (x (N, C, *S), G groups, w (C), b (C)) normalises each sample's group of C/G channels
over the group's channels and S: split N (w, b replicated), or C in whole groups (w, b split
alike; each rank runs G/k groups, ``group_norm_check``: the channel shards must divide G).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, register_check, shape
from autopar.spec import ShardingSpec


@register("layer_norm", "rms_norm")
def norm_rule(node: fx.Node) -> list[AxisOption]:
    """y = (x - mean) / std * w + b over the last len(normalized_shape) dims: split the others."""
    x, normalized_shape = node.args[0], node.args[1]
    nnorm = len(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else 1
    affine = [n for n in node.all_input_nodes if n is not x]  # weight, bias
    out = shape(node)
    return [AxisOption(d, ((x, d),) + tuple((n, R) for n in affine))
            for d in range(len(out) - nnorm) if out[d] > 1]


@register("softmax", "log_softmax")
def softmax_rule(node: fx.Node) -> list[AxisOption]:
    """y = exp(x) / sum_dim exp(x): split any dim but ``dim``."""
    x = node.args[0]
    out = shape(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    dim = dim % len(out)
    return [AxisOption(d, ((x, d),)) for d in range(len(out)) if d != dim and out[d] > 1]


@register("group_norm")
def group_norm_rule(node: fx.Node) -> list[AxisOption]:
    """y = group_norm(x, G, w, b, eps): split N, or C in whole groups with w and b."""
    x, groups = node.args[0], node.args[1]
    affine = [n for n in node.all_input_nodes if n is not x]
    out = shape(node)
    opts = [AxisOption(0, ((x, 0),) + tuple((n, R) for n in affine))] if out[0] > 1 else []
    if groups > 1:
        opts.append(AxisOption(1, ((x, 1),) + tuple((n, 0) for n in affine)))
    return opts


@register_check("group_norm")
def group_norm_check(node: fx.Node, specs: Sequence[ShardingSpec | None], mesh_shape: Sequence[int]) -> bool:
    """Whole groups on every rank: the shards of C divide G."""
    return node.args[1] % specs[0].shards(1, mesh_shape) == 0
