"""placeholder, param, buffer, output, and creation ops.

- placeholder (a model input): every rank receives the global input and keeps its own shard
  for free, so any dim may be split over any mesh axes (never partial).
- param / buffer: one strategy per way to store it: replicated, or any dim split over any axes.
- output: every output leaves replicated and whole: its input specs are all R (the solver prices
  the all-gathers and all-reduces on the edges into it; see strategies_for).
- creation ops (arange, zeros, x.new_ones(shape), ...): a tensor input is read for its dtype and
  device only. Those whose every element is the same value (zeros, ones, full, empty and their
  ``new_*`` forms, which ``zeros_like`` and the other ``*_like`` become) may be made sharded: the
  local shard is the same op on the local shape (``runtime/localize.py``). The others (arange,
  tensor, random draws) are replicated: their values depend on the position.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, R, register, shape, tensor_args
from autopar.tracer.ops import CREATION_OPS, UNIFORM_CREATION


@register("placeholder", "param", "buffer")
def storage_rule(node: fx.Node) -> list[AxisOption]:
    """Split any dim of size > 1 on the axis."""
    return [AxisOption(d, ()) for d, n in enumerate(shape(node) or ()) if n > 1]


@register(*CREATION_OPS)
def creation_rule(node: fx.Node) -> list[AxisOption]:
    """R for every creation op; the uniform ones also split any dim of size > 1."""
    ins = tuple((n, None) for n in tensor_args(node))
    dims = [d for d, n in enumerate(shape(node) or ()) if n > 1] if node.meta.get("op") in UNIFORM_CREATION else []
    return [AxisOption(R, ins)] + [AxisOption(d, ins) for d in dims]
