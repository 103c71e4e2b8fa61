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

# Elementwise ops whose output is linear in each tensor input jointly: sums of partials stay partial.
POINTWISE_LINEAR = frozenset({"add", "sub", "neg", "iadd", "isub"})
# Elementwise ops linear in each input separately: a partial times a replicated tensor is partial.
POINTWISE_MULTILINEAR = frozenset({"mul", "imul"})
# Every elementwise op (with broadcasting) that strategies treat as pointwise.
POINTWISE = POINTWISE_LINEAR | POINTWISE_MULTILINEAR | frozenset({
    "div", "truediv", "floordiv", "pow", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "gelu",
    "silu", "erf", "abs", "sin", "cos", "neg", "reciprocal", "clamp", "minimum", "maximum", "where",
    "masked_fill", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or",
    "to", "type_as", "float", "half", "bfloat16", "softplus", "leaky_relu", "hardtanh", "mish",
    "contiguous", "dropout", "bitwise_not", "and_", "or_", "invert",
    "hardswish", "hardsigmoid", "relu6", "elu", "selu", "celu",  # vision activations
    "long", "int", "bool", "double",  # casts to other kinds: elementwise, not partial-preserving
})
# Ops that only rearrange elements; codegen rewrites their shape arguments to local shapes.
SHAPE_OPS = frozenset({"view", "permute", "expand", "split", "getitem", "slice", "cat", "stack", "contiguous"})
CREATION_OPS = frozenset({"arange", "full", "zeros", "ones", "empty", "zeros_like", "ones_like", "full_like",
                          "empty_like", "tensor", "rand", "randn"})
