"""Elementwise ops with broadcasting, registered in groups by algebraic property.

Every group may split the output on any dim; each tensor input is split on the matching dim
(aligned from the right) or replicated where it is broadcast. The groups differ in partials:

- linear jointly (add, sub, neg): ``sum_r (x_r + y_r) = x + y``, so all tensor inputs partial on
  the same axis give a partial output. Not with a constant operand (``x + 1`` would add n).
- multilinear (mul; div in its numerator): ``sum_r x_r * y = x * y``: one input partial, the
  others replicated on that axis.
- casts (to, float, contiguous, ...): the identity on values, partial in, partial out.
- everything else (gelu, exp, dropout, where, ...) needs non-partial inputs.

``x.type(dtype)`` is a cast to a floating dtype (partial in, partial out), else any split only.
"""
from __future__ import annotations

import numbers

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, shape, split_options, tensor_args, tmeta
from autopar.tracer.ops import POINTWISE, POINTWISE_LINEAR, POINTWISE_MULTILINEAR, Prop, ops_with

CASTS = ops_with(Prop.CAST)
NUMERATOR_LINEAR = frozenset({"div", "truediv"})
NONLINEAR = POINTWISE - POINTWISE_LINEAR - POINTWISE_MULTILINEAR - CASTS - NUMERATOR_LINEAR - {"type"}


def _operands(node: fx.Node) -> list[fx.Node]:
    return tensor_args(node)


@register(*NONLINEAR)
def nonlinear_rule(node: fx.Node) -> list[AxisOption]:
    """y = f(x, ...) elementwise: split any output dim, inputs broadcast alongside."""
    return split_options(shape(node), _operands(node))


@register(*POINTWISE_LINEAR)
def linear_rule(node: fx.Node) -> list[AxisOption]:
    """y = x + y (- ...): also all tensor inputs partial -> partial, unless a constant is added."""
    operands = _operands(node)
    opts = split_options(shape(node), operands)
    has_constant = any(isinstance(a, numbers.Number) and a != 0 for a in node.args[:2])
    if not has_constant:
        opts.append(AxisOption(P, tuple((n, P) for n in operands)))
    return opts


@register(*POINTWISE_MULTILINEAR)
def multilinear_rule(node: fx.Node) -> list[AxisOption]:
    """y = x * z: also one input partial and the others replicated -> partial."""
    operands = _operands(node)
    opts = split_options(shape(node), operands)
    for n in dict.fromkeys(operands):
        if operands.count(n) > 1:  # x * x is quadratic in x
            continue
        opts.append(AxisOption(P, tuple((m, P if m is n else R) for m in operands)))
    return opts


@register(*NUMERATOR_LINEAR)
def div_rule(node: fx.Node) -> list[AxisOption]:
    """y = x / z: linear in x only: x partial, z replicated -> partial."""
    operands = _operands(node)
    opts = split_options(shape(node), operands)
    num = node.args[0]
    if isinstance(num, fx.Node) and shape(num) is not None and operands.count(num) == 1:
        opts.append(AxisOption(P, tuple((m, P if m is num else R) for m in operands)))
    return opts


@register(*CASTS)
def cast_rule(node: fx.Node) -> list[AxisOption]:
    """y = x (another dtype or layout): any split, partial -> partial; a ``type_as`` tensor is read for its dtype."""
    x = node.args[0]
    others = tuple((n, None) for n in _operands(node) if n is not x)
    opts = [AxisOption(d, ((x, d),) + others) for d in range(len(shape(node))) if shape(node)[d] > 1]
    opts.append(AxisOption(P, ((x, P),) + others))
    return opts


@register("type")
def type_rule(node: fx.Node) -> list[AxisOption]:
    """y = x.type(dtype): a cast rule to a floating dtype, else elementwise."""
    if tmeta(node).dtype.is_floating_point and tmeta(node.args[0]).dtype.is_floating_point:
        return cast_rule(node)
    return nonlinear_rule(node)
