"""placeholder, param, buffer, output, and creation ops.

- placeholder (a model input): every rank receives the global input and keeps its own shard
  for free, so any dim may be split over any mesh axes (never partial).
- param / buffer: one strategy per way to store it: replicated, or any dim split over any axes.
- output: every output leaves replicated and whole: its input specs are all R (the solver prices
  the all-gathers and all-reduces on the edges into it; see strategies_for).
- creation ops (arange, zeros, ones_like, ...): replicated; a ``*_like`` input is read for its
  shape only.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, shape, tensor_args
from autopar.tracer.ops import CREATION_OPS


@register("placeholder", "param", "buffer")
def storage_rule(node: fx.Node) -> list[AxisOption]:
    """Split any dim of size > 1 on the axis."""
    return [AxisOption(d, ()) for d, n in enumerate(shape(node) or ()) if n > 1]


@register(*CREATION_OPS)
def creation_rule(node: fx.Node) -> list[AxisOption]:
    return [AxisOption(R, tuple((n, None) for n in tensor_args(node)))]
