"""cross_entropy: loss = reduce_i -log softmax(logits_i)[target_i], logits (N, C), target (N,).

Split the batch dim N of logits and target on an axis: each rank reduces its own rows. With
``reduction="sum"`` or ``"mean"`` the output is a partial scalar (for mean the runtime divides
the local sum by the global count of non-ignored targets); with ``"none"`` it is split on N. A mean
may also take the target replicated on that axis (each rank holds the whole batch's targets, as it
does when they come from the inputs, which every rank passes whole): the rank counts the valid
targets itself and takes its rows of the target locally, so the count needs no all-reduce there.

Or split the class dim C of 2-D logits on an axis (vocabulary parallel, runtime/vocab_parallel.py):
the target is replicated there, the row max, the sum of exponentials and the target's logit are
all-reduced (N floats each, never the logits), and the output is *replicated* on that axis: every
rank of the vocab group holds the same loss, and backward sums the ranks' gradient contributions
over the axis before applying softmax - onehot locally. Offered without class weights and label
smoothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, register_check, shape
from autopar.spec import ShardingSpec


@register("cross_entropy")
def cross_entropy_rule(node: fx.Node) -> list[AxisOption]:
    logits, target = node.args[0], node.args[1]
    if len(shape(logits)) < 2 or shape(logits)[0] <= 1 or not isinstance(target, fx.Node):
        return []
    if shape(target) is None or len(shape(target)) != len(shape(logits)) - 1:
        return []  # class-probability targets: not offered
    reduction = node.kwargs.get("reduction", "mean")
    out = 0 if reduction == "none" else P
    kw = node.kwargs
    # a batch-split mean divides by the global count of valid targets; with class weights the
    # denominator is their weighted sum, which the runtime does not compute: not offered then
    weighted_mean = kw.get("weight") is not None and reduction == "mean"
    opts = [] if weighted_mean else [AxisOption(out, ((logits, 0), (target, 0)))]
    if reduction == "mean" and not weighted_mean:  # the count from the whole target: no collective
        opts.append(AxisOption(P, ((logits, 0), (target, R))))
    if (len(shape(logits)) == 2 and shape(logits)[1] > 1 and kw.get("weight") is None
            and not kw.get("label_smoothing") and kw.get("size_average") is None and kw.get("reduce") is None):
        opts.append(AxisOption(R, ((logits, 1), (target, R))))  # vocabulary parallel
    return opts


@register_check("cross_entropy")
def cross_entropy_check(node: fx.Node, specs: Sequence[ShardingSpec | None], mesh_shape: Sequence[int]) -> bool:
    """A target replicated where the logits' rows are split only on the batch-split path: the
    vocabulary-parallel one counts and indexes the target rows it is given."""
    logits, target = specs[1], specs[2]
    if logits.ndim == 2 and logits.dims[1] and target is not None and target.ndim:
        return target.dims[0] == logits.dims[0]
    return True
