"""embedding: y (..., h) = W (V, h)[ids (...)].

Per mesh axis: split ids on any dim (the output follows, h replicated, W replicated), split
W on the embedding dim h (ids replicated, the output split on its last dim), or split W on the
vocabulary dim V (ids replicated, the output a partial sum): each rank looks up the ids in its
rows and gives zeros for the others, y = sum_r y_r (runtime/vocab_parallel.py). The vocabulary
split is not offered with ``max_norm`` or ``scale_grad_by_freq`` (they need every row's state).
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, shape


@register("embedding")
def embedding_rule(node: fx.Node) -> list[AxisOption]:
    ids, weight = node.args[0], node.args[1]
    nids = len(shape(ids))
    opts = [AxisOption(d, ((ids, d), (weight, R))) for d in range(nids) if shape(ids)[d] > 1]
    opts.append(AxisOption(nids, ((ids, R), (weight, 1))))
    if node.kwargs.get("max_norm") is None and not node.kwargs.get("scale_grad_by_freq", False):
        opts.append(AxisOption(P, ((ids, R), (weight, 0))))  # vocabulary parallel: a masked local lookup
    return opts
