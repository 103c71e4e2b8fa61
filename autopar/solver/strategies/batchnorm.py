"""batch_norm: y = (x - mean) / sqrt(var + eps) * w + b, statistics per channel (dim 1) over all other dims.

Per mesh axis:

- channels: split dim 1 of x and y, and w, b and the running statistics on their dim 0: every
  channel's statistics are local;
- any other dim (batch, or a spatial dim): x and y split, w and b replicated. In training the
  statistics are over the whole batch, so the runtime (``runtime/sync_batchnorm.py``) all-reduces
  the per-channel sums over the mesh axes of those dims, forward and backward; in evaluation the
  running statistics are used and the split is local.

The running statistics are updated in place by the op. The codegen hands the op the stored buffers
(whatever spec the plan gave them) and the runtime converts to and from the channel layout, so the
specs asked for them here only steer the solver to store them alike.

Not linear in x: no partial inputs.

``add_`` (``num_batches_tracked.add_(1)``, which every BatchNorm runs in training) is an in-place
update of a 0-d buffer: replicated, run alike on every rank. Other uses of ``add_`` have no rule.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, shape


@register("batch_norm")
def batch_norm_rule(node: fx.Node) -> list[AxisOption]:
    x = node.args[0]
    per_channel = [n for n in node.args[1:5] if isinstance(n, fx.Node)]  # running mean/var, weight, bias
    out = shape(node)
    opts = [AxisOption(1, ((x, 1),) + tuple((n, 0) for n in per_channel))] if len(out) > 1 else []
    opts += [AxisOption(d, ((x, d),) + tuple((n, R) for n in per_channel))
             for d in range(len(out)) if d != 1 and out[d] > 1]
    return opts


@register("add_")
def counter_rule(node: fx.Node) -> list[AxisOption]:
    """``counter.add_(k)`` on a 0-d tensor: replicated only; anything else is an op without a rule."""
    if shape(node) != ():
        node.meta["fallback"] = True
    return []
