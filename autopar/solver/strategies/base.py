"""Rules for one mesh axis, expanded over every mesh axis of the cluster.

A *rule* looks at one node (its metadata only) and lists the ways to run it on **one** mesh
axis of size n. Each way is an ``AxisOption``: the placement of the node's output on that
axis and the placement each input must arrive in, where a placement is

    R        replicated on the axis
    d (int)  split over the axis along tensor dim d
    P        a partial sum over the axis (the global tensor is the sum of the n local ones)
    None     (inputs only) the node reads no element of this input, only its shape or dtype

For ``linear`` with x (b, k) and W (n, k) the options are R, S(b), S(n) and S(k) -> P:
``AxisOption(P, ((x, 1), (W, 1)))`` says "split x and W along k, the output is a partial sum".

``expand`` turns the options of one axis into ShardingSpecs on the whole mesh: the cartesian
product of one option per mesh axis (so each mesh axis is used at most once per tensor, and a
dim split on axes 0 and 1 gets the ascending tuple (0, 1)), keeping those whose shapes divide
evenly. Axes of size 1 only take the all-replicate option. All-replicate is always offered.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.fx as fx

from autopar.spec import ShardingSpec
from autopar.tracer.meta import TensorMeta, is_multi

R = "R"
P = "P"
Place = int | str | None


@dataclass(frozen=True, slots=True)
class AxisOption:
    """One way to run a node on one mesh axis: the output's placement and ``(input node, placement)`` pairs.

    Inputs not named are replicated (R) when they are tensors. A node named twice (``x * x``) must get
    the same placement both times, else the option is dropped.
    """

    out: Place
    ins: tuple[tuple[fx.Node, Place], ...] = ()


Rule = Callable[[fx.Node], list[AxisOption]]
RULES: dict[str, Rule] = {}


# key -> extra test of one expanded strategy ``(node, (out spec, input specs...), mesh_shape) -> bool``, for
# conditions one mesh axis cannot see (a grouped conv needs its channel shards, over all axes, to divide g).
Check = Callable[[fx.Node, Sequence, Sequence[int]], bool]
CHECKS: dict[str, Check] = {}


def register_check(*keys: str) -> Callable[[Check], Check]:
    """``@register_check("conv2d")``: strategies of these ops that fail the check are not offered."""
    def deco(fn: Check) -> Check:
        for key in keys:
            CHECKS[key] = fn
        return fn
    return deco


def register(*keys: str) -> Callable[[Rule], Rule]:
    """``@register("linear")``: the rule lists the AxisOptions of nodes with these canonical op keys."""
    def deco(fn: Rule) -> Rule:
        for key in keys:
            RULES[key] = fn
        return fn
    return deco


# ---- metadata helpers (pure) -------------------------------------------------------------------
def tmeta(node) -> TensorMeta | tuple | None:
    """The TensorMeta (or tuple of them) of a node, None for anything that is not a tensor."""
    return node.meta.get("tensor") if isinstance(node, fx.Node) else None


# A tuple of TensorMetas (a tuple-valued node); TensorMeta itself is a NamedTuple, so check both.
is_tuple_meta = is_multi


def shape(node) -> tuple[int, ...] | None:
    tm = tmeta(node)
    return tuple(tm.shape) if isinstance(tm, TensorMeta) else None


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """Input nodes that are single tensors, in argument order (duplicates kept)."""
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) if shape(n) is not None else None)
    return out


def replicate_option(node: fx.Node) -> AxisOption:
    return AxisOption(R, ())


def broadcast_place(out_dim: int, out_shape: Sequence[int], in_shape: Sequence[int]) -> Place:
    """The placement of a broadcast input when the output is split on ``out_dim``.

    Dims align from the right; an input dim of size 1 (or absent) is broadcast, so it stays R.
    """
    d = out_dim - (len(out_shape) - len(in_shape))
    if d < 0 or in_shape[d] != out_shape[out_dim]:
        return R
    return d


def split_options(out_shape: Sequence[int], operands: Sequence[fx.Node], dims: Sequence[int] | None = None,
                  ) -> list[AxisOption]:
    """Split the output on each dim in ``dims`` (default: all of size > 1), broadcast inputs alongside."""
    dims = range(len(out_shape)) if dims is None else dims
    opts = []
    for d in dims:
        if out_shape[d] > 1:
            opts.append(AxisOption(d, tuple((n, broadcast_place(d, out_shape, shape(n))) for n in operands)))
    return opts


# ---- expansion over the mesh -------------------------------------------------------------------
def _resolve(node: fx.Node, option: AxisOption, ignored: set) -> tuple[Place, ...] | None:
    """Placements in ``node.all_input_nodes`` order, or None when one input is asked for two ways."""
    inputs = node.all_input_nodes
    places: list[Place] = [R if tmeta(n) is not None and n not in ignored else None for n in inputs]
    seen: dict[fx.Node, Place] = {}
    for n, place in option.ins:
        if n in seen and seen[n] != place:
            return None
        seen[n] = place
        places[inputs.index(n)] = place if tmeta(n) is not None and n not in ignored else None
    return (option.out, *places)


def _shapes_of(node: fx.Node) -> list[list[tuple[int, ...]] | None]:
    """Per tensor (output, then inputs): the shapes its spec must fit (several for a tuple output)."""
    def of(n):
        tm = tmeta(n)
        if isinstance(tm, TensorMeta):
            return [tuple(tm.shape)]
        if is_tuple_meta(tm):
            shapes = [tuple(t.shape) for t in tm if t is not None]
            return shapes or None
        return None
    return [of(node)] + [of(n) for n in node.all_input_nodes]


def expand(node: fx.Node, options: Sequence[AxisOption], mesh_shape: Sequence[int]
           ) -> list[tuple[ShardingSpec | None, ...]]:
    """Every combination of one AxisOption per mesh axis whose specs divide the shapes.

    Returns ``(output spec, input specs...)`` tuples, all-replicate first, without duplicates.
    """
    shapes = _shapes_of(node)
    ndims = [len(s[0]) if s else None for s in shapes]
    ignored = {n for o in options for n, place in o.ins if place is None}  # inputs read for shape/dtype only
    resolved = [r for r in (_resolve(node, o, ignored) for o in [replicate_option(node), *options]) if r is not None]
    all_r = resolved[0]
    per_axis = [resolved if n > 1 else [all_r] for n in mesh_shape]
    out: dict[tuple, None] = {}
    for combo in itertools.product(*per_axis):
        specs = []
        for t, ndim in enumerate(ndims):
            if ndim is None or combo[0][t] is None:
                specs.append(None)
                continue
            dims: list[list[int]] = [[] for _ in range(ndim)]
            partial: list[int] = []
            for axis, places in enumerate(combo):
                place = places[t]
                if place == P:
                    partial.append(axis)
                elif isinstance(place, int):
                    dims[place].append(axis)
            spec = ShardingSpec(tuple(tuple(d) for d in dims), tuple(partial))
            if spec.used_axes() and not all(spec.fits(s, mesh_shape) for s in shapes[t]):
                break
            specs.append(spec)
        else:
            out[tuple(specs)] = None
    return list(out)
