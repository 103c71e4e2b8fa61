"""cross_entropy: loss = reduce_i -log softmax(logits_i)[target_i], logits (N, C), target (N,).

Split the batch dim N of logits and target on an axis: each rank reduces its own rows. With
``reduction="sum"`` or ``"mean"`` the output is a partial scalar (for mean the runtime divides
the local sum by the global count of non-ignored targets); with ``"none"`` it is split on N.
The class dim C stays replicated (a vocabulary-parallel loss is not offered yet).
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, register, shape


@register("cross_entropy")
def cross_entropy_rule(node: fx.Node) -> list[AxisOption]:
    logits, target = node.args[0], node.args[1]
    if len(shape(logits)) < 2 or shape(logits)[0] <= 1 or not isinstance(target, fx.Node):
        return []
    if shape(target) is None or len(shape(target)) != len(shape(logits)) - 1:
        return []  # class-probability targets: not offered
    reduction = node.kwargs.get("reduction", "mean")
    out = 0 if reduction == "none" else P
    return [AxisOption(out, ((logits, 0), (target, 0)))]
