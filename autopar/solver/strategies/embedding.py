"""embedding: y (..., h) = W (V, h)[ids (...)].

Per mesh axis: split ids on any dim (the output follows, h replicated, W replicated), or split
W on the embedding dim h (ids replicated, the output split on its last dim). Splitting the
vocabulary (a masked lookup giving a partial output) is not offered yet.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, shape


@register("embedding")
def embedding_rule(node: fx.Node) -> list[AxisOption]:
    ids, weight = node.args[0], node.args[1]
    nids = len(shape(ids))
    opts = [AxisOption(d, ((ids, d), (weight, R))) for d in range(nids) if shape(ids)[d] > 1]
    opts.append(AxisOption(nids, ((ids, R), (weight, 1))))
    return opts
