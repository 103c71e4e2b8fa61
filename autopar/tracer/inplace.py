"""Functionalisation of in-place ops on fresh tensors: ``x.masked_fill_(m, v)`` -> ``x2 = x.masked_fill(m, v)``.

An in-place op mutates the tensor its first argument names. Once sharded, that argument may
arrive resharded (a copy), and the mutation would miss the tensor later ops read. So, before
normalisation, an in-place op whose target is *fresh* (made by a creation op, a clone or an
arithmetic op, so no other tensor aliases it) becomes its out-of-place twin, and every later
user of the target reads the new value instead:

    y = x.op_(a)          ->   y = x.op(a);        later users of x read y
    x[index] = v          ->   y = setitem_copy(x, index, v);   later users of x read y

(``setitem_copy`` clones, then assigns: the same values, and autograd sees no mutation.) In-place
ops on views, parameters, buffers or inputs are left as they are: they run replicated.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from autopar.tracer.ops import ALIASING_SPELLINGS


def setitem_copy(x: torch.Tensor, index, value) -> torch.Tensor:
    """``x`` with ``x[index] = value``, out of place."""
    out = x.clone()
    out[index] = value
    return out


def _name(node: fx.Node) -> str:
    if node.op == "call_method":
        return node.target
    name = getattr(node.target, "__name__", str(node.target))
    return name.strip("_") if name.startswith("__") else name


def _is_fresh(x) -> bool:
    """A tensor no other tensor aliases: made by a call whose result never shares an input's memory."""
    return (isinstance(x, fx.Node) and x.op in ("call_function", "call_method")
            and isinstance(x.meta.get("val"), torch.Tensor) and _name(x) not in ALIASING_SPELLINGS)


def _twin(node: fx.Node):
    """The out-of-place method for an in-place ``x.op_(...)`` call, or None."""
    if node.op != "call_method" or not node.target.endswith("_") or node.target.endswith("__"):
        return None
    return node.target[:-1] if hasattr(torch.Tensor, node.target[:-1]) else None


def _no_earlier_alias(x: fx.Node, node: fx.Node, order: dict) -> bool:
    """No view of ``x`` was taken before ``node`` (it would see the mutation, its copy would not)."""
    return all(_name(u) not in ALIASING_SPELLINGS for u in x.users if order.get(u, -1) < order[node])


def functionalize(graph: fx.Graph) -> None:
    """Rewrite in-place ops on fresh tensors out of place (module docstring), in graph order."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        x = node.args[0] if node.args else None
        if not _is_fresh(x) or not _no_earlier_alias(x, node, order):
            continue
        if (twin := _twin(node)) is not None:
            node.target = twin
        elif node.op == "call_function" and node.target is operator.setitem:
            node.target = setitem_copy
            node.meta["val"] = setitem_copy(*fx.node.map_aggregate(
                node.args, lambda a: a.meta["val"] if isinstance(a, fx.Node) else a))
        else:
            continue
        for user in list(x.users):
            if user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(x, node)
