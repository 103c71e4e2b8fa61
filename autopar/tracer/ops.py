"""Canonical ops: the form every node has after ``autopar.trace`` (the tracer's contract).

After normalisation every op node is a ``call_function`` whose target and positional
argument layout are fixed by its key, whatever spelling the model used (module,
``torch.*``, ``Tensor`` method, ``operator.*``). Strategies and codegen rely on this table.
Dims are non-negative; shapes are fully resolved tuples of ints (no -1).

=============== ================================== =============================================
key             target                             args (kwargs only where noted)
=============== ================================== =============================================
placeholder     (placeholder)                      a model input; its ``"val"`` says what it is
param           (get_attr)                         trainable parameter; ``meta["param"]`` its name
buffer          (get_attr)                         buffer or constant tensor
output          (output)                           the model's (possibly nested) outputs
linear          F.linear                           (x, weight, bias|None)      y = x W^T + b
addmm           torch.addmm                        (bias, a, b)                y = bias + a @ b
matmul          torch.matmul                       (a, b)      mm, bmm, @, matmul; batch dims broadcast
embedding       F.embedding                        (ids, weight) kwargs padding_idx etc. as given
view            torch.reshape                      (x, shape)  view/reshape/flatten/unflatten/squeeze/unsqueeze
permute         torch.permute                      (x, dims)   permute/transpose/t/.T/.mT
expand          torch.Tensor.expand                (x, shape)
contiguous      torch.Tensor.contiguous            (x,)        also clone, detach-free copies
split           torch.split                        (x, sizes: list[int], dim)  split/chunk/unbind(+view)
getitem         operator.getitem                   (seq, i)    element i of a tuple/list-valued node
slice           operator.getitem                   (x, index)  basic indexing of a tensor: index is a
                                                               tuple with one slice/int per input dim
                                                               (slices resolved: start, stop, step ints)
                                                               plus None for new dims; no Ellipsis
index           operator.getitem / torch.index_select  advanced (tensor) indexing, as given
cat             torch.cat                          (tensors: list, dim)
stack           torch.stack                        (tensors: list, dim)
<pointwise>     as the model called it             elementwise with broadcasting, tensors and scalars
                                                   in their original positions; keys in POINTWISE
sum, mean       torch.sum / torch.mean             (x, dims: tuple, keepdim: bool) kwargs dtype
amax, amin      torch.amax / torch.amin            (x, dims: tuple, keepdim: bool)
softmax         torch.softmax                      (x, dim)    also log_softmax under its own key
log_softmax     torch.log_softmax                  (x, dim)
layer_norm      F.layer_norm                       (x, normalized_shape, weight|None, bias|None, eps)
rms_norm        F.rms_norm                         (x, normalized_shape, weight|None, eps)
dropout         F.dropout                          (x, p, training)
sdpa            F.scaled_dot_product_attention     (q, k, v) kwargs attn_mask, dropout_p, is_causal, scale
cross_entropy   F.cross_entropy                    (logits, target) kwargs ignore_index, reduction, ...
conv2d, batch_norm, max_pool2d, avg_pool2d, adaptive_avg_pool2d, pad, roll: positional layouts in
                ``autopar.tracer.canonical_vision``
arange/full/    torch.arange, torch.full,          creation ops: shape/ends resolved; no ``device``
zeros/ones/...  torch.zeros, torch.ones, ...       literal: the device comes from a graph value
                                                   (``x.device``) or is the runtime default
device          builtins.getattr                   (x, "device")  the device of a graph value, fed to the
                                                   ``device=`` of creation ops and to ``.to``
getattr         builtins.getattr                   (x, name)   another attribute read (rare)
setitem         operator.setitem                   (x, index, value)  in-place ``x[index] = value``; never
                                                   removed as dead code. On a fresh tensor (not a view,
                                                   input or parameter) it becomes ``setitem_copy``:
setitem_copy    inplace.setitem_copy               (x, index, value)  ``x`` with ``x[index] = value``, out of
                                                   place; in-place ``x.op_(...)`` on a fresh tensor likewise
                                                   becomes ``x.op(...)`` (``autopar.tracer.inplace``)
clone           torch.Tensor.clone                 (x,)        only when a user of the copy is in-place
                                                   (otherwise ``contiguous``)
<other>         as the model called it             anything else keeps its target; key = its name
                                                   (a ``Tensor`` method becomes ``torch.Tensor.<name>``;
                                                   in-place methods such as ``masked_fill_`` keep their
                                                   name and are never removed as dead code)
=============== ================================== =============================================

Devices (decided by the tracer): a device literal the model passes (``device=...``, ``.to("cuda")``,
``self.device``) becomes the graph value ``getattr(<first tensor input>, "device")`` (key
``device``); creation ops called without a device keep no ``device`` kwarg (the runtime default).
So the graph runs on whatever device its inputs are on, and ``meta`` never appears in it.

Placeholders: one per example input, named after it, in order (dict inputs: tensors first). A
plain-value input (``use_cache=False``) is a placeholder whose ``"val"`` is that value, with the
value as its default where the signature allows; the graph never reads it (the value is baked in).
The output node's single argument is a flat tuple of values; ``gm(...)`` rebuilds the model's own
output structure (e.g. a Hugging Face ``ModelOutput``) with ``pytree.tree_unflatten``.
"""
from __future__ import annotations

import enum


class Prop(enum.Flag):
    """What an op is, for every stage that asks (one table: ``OPS``; add an op here, once)."""

    NONE = 0
    POINTWISE = enum.auto()  # elementwise with broadcasting (strategies: pointwise rules; profile: 1 FLOP/element)
    LINEAR = enum.auto()  # linear in its tensor inputs jointly: a sum of partials stays partial (add, sub)
    MULTILINEAR = enum.auto()  # linear in each input separately: partial x replicated stays partial (mul)
    CAST = enum.auto()  # keeps every value (to a float dtype, contiguous): a partial sum stays partial
    VIEW = enum.auto()  # returns a view of its input: moves no bytes, holds no new storage
    ALIAS = enum.auto()  # may return its input itself or a view of it (a cast to the same dtype, dropout p=0)
    SHAPE = enum.auto()  # only rearranges elements: no FLOPs; codegen rewrites its shape arguments to local
    META = enum.auto()  # reads a tensor's metadata (x.device, an attribute), no elements
    TRIVIAL = enum.auto()  # follows its producer's spec in the ILP when it has one input (solver/merge.py)
    SAVES_NOTHING = enum.auto()  # keeps nothing for backward (profile)
    RANDOM = enum.auto()  # draws random numbers (a recomputed region replays the RNG state)
    CREATION = enum.auto()  # makes a new tensor from shapes or values (planned replicated)
    INPLACE = enum.auto()  # mutates its first argument (never removed as dead code)


P = Prop
_CASTS_TO_OTHER_KINDS = P.POINTWISE | P.ALIAS  # long/int/bool/double: elementwise, not partial-preserving

OPS: dict[str, Prop] = {
    # linear pointwise: partial sums stay partial; nothing saved
    **dict.fromkeys(("add", "sub", "neg", "iadd", "isub"), P.POINTWISE | P.LINEAR | P.SAVES_NOTHING),
    **dict.fromkeys(("mul", "imul"), P.POINTWISE | P.MULTILINEAR),
    # other pointwise math
    **dict.fromkeys((
        "div", "truediv", "floordiv", "pow", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "gelu",
        "silu", "erf", "abs", "sin", "cos", "reciprocal", "clamp", "minimum", "maximum", "where", "masked_fill",
        "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "softplus", "leaky_relu",
        "hardtanh", "mish", "bitwise_not", "and_", "or_", "invert",
        "hardswish", "hardsigmoid", "relu6", "elu", "selu", "celu",  # vision activations
    ), P.POINTWISE),
    # piecewise-constant pointwise ops: their gradient is 0, they keep nothing for backward
    **dict.fromkeys(("sign", "sgn", "ceil", "floor", "round", "trunc"), P.POINTWISE | P.SAVES_NOTHING),
    # value-preserving casts: partial-preserving pointwise, may alias, follow their producer
    **dict.fromkeys(("to", "float", "half", "bfloat16"), P.POINTWISE | P.CAST | P.ALIAS | P.TRIVIAL | P.SAVES_NOTHING),
    "type_as": P.POINTWISE | P.CAST | P.ALIAS | P.SAVES_NOTHING,
    "contiguous": P.POINTWISE | P.CAST | P.ALIAS | P.TRIVIAL | P.SHAPE | P.SAVES_NOTHING,
    "clone": P.POINTWISE | P.CAST | P.SHAPE | P.SAVES_NOTHING,  # a copy of the same values, new storage
    "type": P.POINTWISE | P.ALIAS | P.SAVES_NOTHING,  # x.type(dtype): a cast, partial-preserving to a float dtype
    **dict.fromkeys(("long", "int", "bool"), _CASTS_TO_OTHER_KINDS),
    "double": _CASTS_TO_OTHER_KINDS,
    "dropout": P.POINTWISE | P.ALIAS | P.TRIVIAL | P.RANDOM,
    # views and other rearrangements
    **dict.fromkeys(("view", "permute"), P.VIEW | P.ALIAS | P.SHAPE | P.TRIVIAL | P.SAVES_NOTHING),
    "getitem": P.VIEW | P.ALIAS | P.SHAPE | P.TRIVIAL | P.SAVES_NOTHING,
    **dict.fromkeys(("expand", "slice", "split"), P.VIEW | P.ALIAS | P.SHAPE | P.SAVES_NOTHING),
    **dict.fromkeys(("cat", "stack"), P.SHAPE | P.SAVES_NOTHING),
    **dict.fromkeys(("repeat", "repeat_interleave"), P.SHAPE | P.SAVES_NOTHING),  # copies; backward sums them
    **dict.fromkeys(("device", "getattr"), P.META | P.ALIAS | P.SAVES_NOTHING),
    # reductions that save nothing (their backward only broadcasts; arg-reductions have none)
    **dict.fromkeys(("sum", "mean", "argmax", "argmin"), P.SAVES_NOTHING),
    # creation (``zeros_like(x)`` and the other ``*_like`` are canonically ``x.new_zeros(shape)``)
    **dict.fromkeys(("arange", "full", "zeros", "ones", "empty", "new_zeros", "new_ones", "new_full", "new_empty",
                     "tensor"), P.CREATION),
    **dict.fromkeys(("rand", "randn"), P.CREATION | P.RANDOM),
    **dict.fromkeys(("randint", "rand_like", "randn_like", "bernoulli", "multinomial", "normal"), P.RANDOM),
}

# Spellings as the model wrote them, before normalisation, whose result may share an input's memory
# (``tracer/inplace.py`` asks this of raw ``call_method``/``call_function`` names).
ALIASING_SPELLINGS = frozenset({
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "permute",
    "transpose", "t", "expand", "expand_as", "split", "chunk", "unbind", "getitem", "contiguous", "to", "float",
    "half", "bfloat16", "type_as", "long", "int", "bool", "double", "detach", "narrow", "select", "as_strided",
    "diagonal", "movedim", "swapaxes", "swapdims", "T", "mT", "getattr", "type", "cuda", "cpu",
})


# ``operator`` functions whose names end in "_" but work out of place (``a & b`` is ``operator.and_``)
_OPERATOR_NAMES = frozenset({"and_", "or_", "not_", "is_"})


def inplace_name(name: str) -> bool:
    """Whether an op spelled ``name`` works in place (``add_``, ``masked_fill_``; not ``operator.and_``)."""
    return name.endswith("_") and not name.endswith("__") and name not in _OPERATOR_NAMES


def props(op: str | None) -> Prop:
    """The properties of canonical op ``op`` (``Prop.NONE`` for ops not in the table)."""
    return OPS.get(op, P.NONE) if op is not None else P.NONE


def has(op: str | None, prop: Prop) -> bool:
    """Whether ``op`` has any of the properties in ``prop``."""
    return bool(props(op) & prop)


def ops_with(prop: Prop) -> frozenset[str]:
    """Every op of the table that has any of ``prop``."""
    return frozenset(k for k, v in OPS.items() if v & prop)


# Named views of the table, for the readers that want a set.
POINTWISE = ops_with(P.POINTWISE)
POINTWISE_LINEAR = ops_with(P.LINEAR)
POINTWISE_MULTILINEAR = ops_with(P.MULTILINEAR)
SHAPE_OPS = ops_with(P.SHAPE)
CREATION_OPS = ops_with(P.CREATION)
# creation ops whose every element is the same (zeros, ones, full, empty): any shard of the output is the same
# tensor of the shard's shape, so they may be created sharded; (index-dependent arange, tensor, random: not)
UNIFORM_CREATION = frozenset({"full", "zeros", "ones", "empty", "new_zeros", "new_ones", "new_full", "new_empty"})
