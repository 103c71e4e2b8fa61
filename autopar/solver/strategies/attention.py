"""sdpa: softmax(q k^T / sqrt(d) + mask) v, with q (..., s, d), k and v (..., s_kv, d).

Attention mixes the sequence and head-dim dims; the leading dims (batch, heads) are
independent, so each may be split on q, k, v and the output alike. An attention mask,
broadcast against (..., s, s_kv), follows on the dims it has (R where it is broadcast).
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, broadcast_place, register, shape


@register("sdpa")
def sdpa_rule(node: fx.Node) -> list[AxisOption]:
    q, k, v = node.args[:3]
    mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
    out = shape(node)
    scores = tuple(out[:-1]) + (shape(k)[-2],)  # (..., s, s_kv): what the mask broadcasts against
    opts = []
    for d in range(len(out) - 2):
        if out[d] <= 1 or any(shape(t)[d] != out[d] for t in (q, k, v)):
            continue
        ins = [(q, d), (k, d), (v, d)]
        if isinstance(mask, fx.Node) and shape(mask) is not None:
            ins.append((mask, broadcast_place(d, scores, shape(mask))))
        opts.append(AxisOption(d, tuple(ins)))
    return opts if all(len(shape(t)) == len(out) for t in (q, k, v)) else []

