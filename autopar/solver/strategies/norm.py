"""layer_norm, rms_norm, softmax, log_softmax: split only the dims the op does not mix.

layer_norm / rms_norm normalise over the trailing ``len(normalized_shape)`` dims of x: the
leading dims may be split (x and y alike); weight and bias stay replicated. softmax mixes
only ``dim``. None of them is linear, so no partial inputs.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, shape


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
