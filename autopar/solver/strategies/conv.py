"""conv2d: y (N, Co, Ho, Wo) = conv(x (N, Ci, H, W), w (Co, Ci/g, kh, kw)) + b (Co), g groups.

    y[n, o] = sum_{i in group(o)} x[n, i] * w[o, i - first(group(o))]  (+ b[o])

Per mesh axis:

- batch: split N on x and y; w and b replicated (data parallel);
- output channels (g = 1): split Co on w, b and y, x replicated (each rank computes its filters);
- input channels (g = 1): split Ci on x and w: each rank sums over its channels, y is a partial
  sum (a bias becomes partial too, the runtime divides a replicated one by n);
- groups (g > 1, depthwise included): split the channels of x, w's dim 0 and y alike; rank r runs
  groups [r g/n, (r+1) g/n) locally with ``groups = g / n``. Valid only when the channel shards
  divide g (``conv2d_check``; for depthwise convs Ci = g, so that is Ci's own divisibility);
- y is linear in x: x partial, w replicated, gives a partial y.

Spatial dims are never split (a split would need halo exchanges). conv1d (Whisper's audio stem),
y (N, Co, Lo) from x (N, Ci, L) and w (Co, Ci/g, k), has the same layout and the same rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, register_check
from autopar.spec import ShardingSpec


@register("conv2d", "conv1d")
def conv2d_rule(node: fx.Node) -> list[AxisOption]:
    x, w, b = node.args[:3]
    groups = node.args[6]

    def bias(place):
        return ((b, place),) if isinstance(b, fx.Node) else ()

    opts = [AxisOption(0, ((x, 0), (w, R)) + bias(R))]
    if groups == 1:
        opts.append(AxisOption(1, ((x, R), (w, 0)) + bias(0)))
        opts.append(AxisOption(P, ((x, 1), (w, 1)) + bias(P)))
    else:
        opts.append(AxisOption(1, ((x, 1), (w, 0)) + bias(0)))
    opts.append(AxisOption(P, ((x, P), (w, R)) + bias(P)))
    return opts


@register_check("conv2d", "conv1d")
def conv2d_check(node: fx.Node, specs: Sequence[ShardingSpec | None], mesh_shape: Sequence[int]) -> bool:
    """A grouped conv split on channels needs whole groups on every rank: shards(Co) divides g."""
    groups, out = node.args[6], specs[0]
    return groups == 1 or groups % out.shards(1, mesh_shape) == 0
