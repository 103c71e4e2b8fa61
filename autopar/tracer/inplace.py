"""Functionalisation of in-place ops on fresh tensors: ``x.masked_fill_(m, v)`` -> ``x2 = x.masked_fill(m, v)``.

An in-place op mutates the tensor its first argument names. Once sharded, that argument may
arrive resharded (a copy), and the mutation would miss the tensor later ops read. So, before
normalisation, an in-place op whose target is *fresh* (made by a creation op, a clone or an
arithmetic op, so no other tensor aliases it) becomes its out-of-place twin, and every later
user of the target reads the new value instead:

    y = x.op_(a)          ->   y = x.op(a);        later users of x read y
    x[index] = v          ->   y = setitem_copy(x, index, v);   later users of x read y

(``setitem_copy`` clones, then assigns: the same values, and autograd sees no mutation.) An in-place
op on a basic-index view of a fresh tensor (``k[..., :d].copy_(k_nope)``, DeepSeek-V3) writes into
the fresh tensor, so it becomes an assignment of the new values:

    v = x[index]; v.op_(a)    ->   w = v.op(a);  y = setitem_copy(x, index, w)
    v = x[index]; v.copy_(s)  ->   y = setitem_copy(x, index, s)

and later readers of x read y (of v: w, or ``y[index]``). In-place ops on other views, parameters,
buffers or inputs are left as they are: they run replicated.
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


def _vals(args):
    return fx.node.map_aggregate(args, lambda a: a.meta["val"] if isinstance(a, fx.Node) else a)


def _redirect(old: fx.Node, new: fx.Node, after: fx.Node, order: dict, skip=()) -> None:
    """Users of ``old`` that come after ``after`` read ``new`` instead."""
    for user in list(old.users):
        if user is not new and user not in skip and order.get(user, -1) > order[after]:
            user.replace_input_with(old, new)


def _view_of_fresh(v, node: fx.Node, order: dict):
    """(x, index) when ``v = x[index]`` is a basic-index view of a fresh x with no other alias before ``node``."""
    if not (isinstance(v, fx.Node) and v.op == "call_function" and v.target is operator.getitem):
        return None
    x, index = v.args
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items) or not _is_fresh(x):
        return None
    others = [u for u in x.users if u is not v and order.get(u, -1) < order[node] and _name(u) in ALIASING_SPELLINGS]
    return None if others else (x, index)


def _assign_through_view(graph: fx.Graph, node: fx.Node, order: dict) -> bool:
    """``x[index].op_(...)`` / ``x[index].copy_(s)`` on a fresh x -> an out-of-place assignment (docstring)."""
    v = node.args[0]
    found = _view_of_fresh(v, node, order)
    twin = _twin(node)
    if found is None or (twin is None and node.target != "copy_") or (node.target == "copy_" and len(node.args) < 2):
        return False
    x, index = found
    if node.target == "copy_":
        node.op, node.target, node.args, node.kwargs = "call_function", setitem_copy, (x, index, node.args[1]), {}
        node.meta["val"] = setitem_copy(*_vals(node.args))
        new_x = new_v = node
        readers = list(node.users) + [u for u in v.users if order.get(u, -1) > order[node]]
        if readers:  # the copy's result, or v read again later: the view of the new x
            with graph.inserting_after(node):
                new_v = graph.call_function(operator.getitem, (node, index))
            new_v.meta = dict(v.meta, val=node.meta["val"][index])
            order[new_v] = order[node]
            for user in list(node.users):
                if user is not new_v:
                    user.replace_input_with(node, new_v)
    else:
        node.target = twin
        with graph.inserting_after(node):
            new_x = graph.call_function(setitem_copy, (x, index, node))
        new_x.meta = dict(x.meta, val=setitem_copy(*_vals(new_x.args)))
        order[new_x] = order[node]
        new_v = node
    _redirect(x, new_x, node, order, skip={node})
    _redirect(v, new_v, node, order, skip={node})
    return True


def functionalize(graph: fx.Graph) -> None:
    """Rewrite in-place ops on fresh tensors out of place (module docstring), in graph order."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        x = node.args[0] if node.args else None
        if node.op == "call_method" and node.target.endswith("_") and _assign_through_view(graph, node, order):
            continue
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
