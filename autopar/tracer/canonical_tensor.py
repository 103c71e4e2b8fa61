"""Canonical forms of more tensor ops (batched matmuls, repeats, factories, selections).

Called by ``canonical._canonicalize_op`` for the names in ``TENSOR_NAMES``; each rewrite fixes the
target and a positional layout, with every dim non-negative and every shape a tuple of ints:

================= =========================== ====================================================
key               target                      args (kwargs only where noted)
================= =========================== ====================================================
baddbmm           torch.baddbmm               (input, batch1, batch2) kwargs beta, alpha when not 1:
                                              y = beta * input + alpha * batch1 @ batch2
einsum            torch.einsum                (equation, *operands); the equation explicit
                                              (``"bij,bjk->bik"``: no spaces, no ``...``, with ``->``)
repeat            torch.Tensor.repeat         (x, sizes: tuple)   len(sizes) >= x.dim()
repeat_interleave torch.repeat_interleave     (x, repeats: int, dim)   an int count along one dim
new_zeros/ones/   torch.Tensor.new_zeros, ... (x, shape) / new_full (x, shape, fill_value); kwargs
empty, new_full                               dtype, device, requires_grad as given. ``zeros_like(x)``
                                              and the other ``*_like`` factories take this form:
                                              the *global* shape is an argument, so a sharded x
                                              never leaks its local shape into the new tensor
getitem           operator.getitem            ``x.values`` / ``x.indices`` of a (values, indices)
                                              result: element 0 / 1
argmax, argmin    torch.argmax / argmin       (x, dim|None, keepdim)
scatter           torch.Tensor.scatter        (x, dim, index, src|value) kwargs reduce as given
================= =========================== ====================================================

A spelling these rules do not recognise (a tensor of repeats, ``repeat_interleave`` of the
flattened tensor) keeps the model's own call under its name: an op without a rule.
"""
from __future__ import annotations

import operator
import string

import torch
import torch.fx as fx

TENSOR_NAMES = frozenset({"baddbmm", "einsum", "repeat", "repeat_interleave", "zeros_like", "ones_like",
                          "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full", "argmax",
                          "argmin", "scatter", "getattr"})
_LIKE = {"zeros_like": "new_zeros", "ones_like": "new_ones", "empty_like": "new_empty", "full_like": "new_full"}
_FACTORY_KWARGS = ("dtype", "device", "requires_grad")


def _val(a):
    return a.meta.get("val") if isinstance(a, fx.Node) else a


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _set(node: fx.Node, key: str, target, args, kwargs=None) -> bool:
    node.op, node.target, node.args, node.kwargs = "call_function", target, tuple(args), dict(kwargs or {})
    node.meta["op"] = key
    return True


def canonicalize_tensor(node: fx.Node, name: str) -> bool:
    """Rewrite ``node`` (its op name in TENSOR_NAMES) to its canonical form; False if not recognised."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    xv, out = _val(x), node.meta.get("val")
    if name == "getattr":
        return _field(node, xv)
    if not isinstance(out, torch.Tensor):
        return False
    if name == "baddbmm":
        b1, b2 = _arg(node, 1, "batch1"), _arg(node, 2, "batch2")
        scale = {k: v for k, v in (("beta", node.kwargs.get("beta", 1)), ("alpha", node.kwargs.get("alpha", 1)))
                 if v != 1}
        return _set(node, "baddbmm", torch.baddbmm, (x, b1, b2), scale)
    if name == "einsum":
        operands = node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        shapes = [tuple(_val(o).shape) for o in operands]
        return _set(node, "einsum", torch.einsum, (explicit_equation(node.args[0], shapes), *operands))
    if not isinstance(xv, torch.Tensor):
        return False
    if name == "repeat":
        sizes = node.args[1:] if len(node.args) > 1 else (node.kwargs["repeats"],)
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
            sizes = sizes[0]
        return _set(node, "repeat", torch.Tensor.repeat, (x, tuple(int(s) for s in sizes)))
    if name == "repeat_interleave":
        repeats, dim = _arg(node, 1, "repeats"), _arg(node, 2, "dim")
        if not isinstance(repeats, int) or dim is None:
            return False
        return _set(node, "repeat_interleave", torch.repeat_interleave, (x, repeats, dim % xv.dim()))
    if name in _LIKE or name in _LIKE.values():
        key = _LIKE.get(name, name)
        fill = (_arg(node, 1, "fill_value"),) if key == "new_full" else ()
        if key == "new_full" and name == "new_full":
            fill = (_arg(node, 2, "fill_value"),)
        kwargs = {k: node.kwargs[k] for k in _FACTORY_KWARGS if node.kwargs.get(k) is not None}
        return _set(node, key, getattr(torch.Tensor, key), (x, tuple(out.shape), *fill), kwargs)
    if name in ("argmax", "argmin"):
        dim = _arg(node, 1, "dim")
        dim = None if dim is None else dim % max(xv.dim(), 1)
        return _set(node, name, getattr(torch, name), (x, dim, bool(_arg(node, 2, "keepdim", False))))
    if name == "scatter":
        src = _arg(node, 3, "src", node.kwargs.get("value"))
        kwargs = {"reduce": node.kwargs["reduce"]} if node.kwargs.get("reduce") is not None else {}
        dim = _arg(node, 1, "dim")
        return _set(node, "scatter", torch.Tensor.scatter, (x, dim % xv.dim(), _arg(node, 2, "index"), src), kwargs)
    return False


def _field(node: fx.Node, xv) -> bool:
    """``r.values`` / ``r.indices`` of a ``torch.return_types`` result (topk, sort, max, ...): getitem."""
    attr = node.args[1] if len(node.args) > 1 else None
    if not (isinstance(xv, tuple) and type(xv).__module__ == "torch.return_types"):
        return False
    fields = [f for f in ("values", "indices") if hasattr(xv, f)]
    if attr not in fields or len(xv) != 2:
        return False
    return _set(node, "getitem", operator.getitem, (node.args[0], fields.index(attr)))


def explicit_equation(equation: str, shapes) -> str:
    """``equation`` with spaces dropped, ``...`` spelled as letters and the output written out.

    ``explicit_equation("...ij,...jk", [(2, 3, 4), (4, 5)]) == "aij,jk->aik"`` (implicit mode: the
    ellipsis dims, then the letters used once, in alphabetical order).
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    used = set(eq) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used]
    n_ell = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(spare[:n_ell])
    new_terms = []
    for t, s in zip(terms, shapes):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k:] if k else "")
        new_terms.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        letters = "".join(new_terms)
        out = ell + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ell))
    return ",".join(new_terms) + "->" + out
