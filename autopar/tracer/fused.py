"""Split fused projections: one matmul whose output is immediately split into pieces becomes one
matmul per piece, each with its own slice of the weight (and bias).

GPT-2's attention computes q, k and v with one ``Conv1D`` (``addmm(b, x, W)``, W of shape
(h, 3h)) and splits the result on its last dim::

    qkv = addmm(b, x, W).view(B, S, 3h);  q, k, v = qkv.split(h, dim=2)

Splitting W's columns over a mesh axis (Megatron's column split) would give each device a
contiguous block of the 3h columns, which is not a block of heads of q, k and v, so the split
cannot be carried into the heads and the plan gathers the whole qkv. After this pass the graph
reads::

    q = addmm(b[0:h], x, W[:, 0:h]).view(B, S, h)     (and k, v with the next column blocks)

and each piece's weight may be split on its own, heads and all. The pieces are parameters of
the traced module named ``<weight>_piece<i>``, views of the original weight's columns (so the
traced forward still equals the model's), and carry ``meta["param_piece"] = FusedPiece(original name,
dim, start, stop)``: the per-rank module stores them apart and ``full_state_dict``/``full_grads``
join them back under the original name.

Only the unambiguous form is rewritten: the weight and bias are used once and not tied, the
matmul and the optional view between it and the split have no other user, the split is on
the output-feature dim, and every piece is read (a fused q/k/v always is; a block nothing reads
would leave its weight piece without a gradient where the single-device weight has one).
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import torch
import torch.fx as fx


class FusedPiece(NamedTuple):
    """``meta["param_piece"]``: this weight is ``original[start:stop]`` along ``dim`` of a fused projection."""

    original: str
    dim: int
    start: int
    stop: int


def split_fused_projections(gm: fx.GraphModule) -> int:
    """Rewrite every fused projection of ``gm`` (module docstring) in place; returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.meta.get("op") == "split" and _rewrite(gm, node):
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


def _is_own_param(node, user: fx.Node) -> bool:
    """A parameter (or its mixed-precision cast: ``to(param, dtype)``) used by ``user`` alone, not tied."""
    if isinstance(node, fx.Node) and _is_cast(node) and _only_user(node, user):
        node, user = node.args[0], node
    return (isinstance(node, fx.Node) and node.op == "get_attr" and "param" in node.meta
            and len(node.meta.get("param_aliases", ())) <= 1 and _only_user(node, user))


def _is_cast(node: fx.Node) -> bool:
    return (node.meta.get("op") == "to" and len(node.args) == 2 and isinstance(node.args[1], torch.dtype)
            and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr")


def _match(split: fx.Node):
    """``(matmul, view or None, weight, bias or None, weight dim)`` if ``split`` cuts a fused projection."""
    x, sizes, dim = split.args[0], split.args[1], split.args[2]
    view = None
    if x.meta.get("op") == "view":
        view, x = x, x.args[0]
        if not _only_user(view, split) or view.meta["val"].shape[-1] != x.meta["val"].shape[-1]:
            return None
    out = (view or x).meta["val"]
    if dim % out.dim() != out.dim() - 1 or not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        return None
    op = x.meta.get("op")
    if op == "addmm" and len(x.args) == 3 and not x.kwargs:
        bias, _inp, weight = x.args
        wdim = 1
    elif op == "linear":
        weight = x.args[1]
        bias = x.args[2] if len(x.args) > 2 else x.kwargs.get("bias")
        wdim = 0
    else:
        return None
    if not _only_user(x, view or split) or not _is_own_param(weight, x):
        return None
    if bias is not None and (not _is_own_param(bias, x) or bias.meta["val"].dim() != 1):
        return None
    if weight.meta["val"].dim() != 2:
        return None
    users = list(split.users)
    if not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
        return None
    used = {u.args[1] % len(sizes) for u in users if u.users}
    if len(used) != len(sizes):  # a piece nothing reads: cut, its weight piece would get no gradient, where the
        return None  # whole weight gets one (zeros in that block) on one device
    return x, view, weight, bias, wdim


def _piece_param(gm: fx.GraphModule, node: fx.Node, dim: int, start: int, stop: int, i: int) -> str:
    """Register ``node``'s parameter sliced on ``dim`` as ``<name>_piece<i>``; returns the new target."""
    owner_path, _, leaf = node.target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    full = getattr(owner, leaf)
    piece = full.detach().narrow(dim, start, stop - start)
    owner.register_parameter(f"{leaf}_piece{i}", torch.nn.Parameter(piece, requires_grad=full.requires_grad))
    return f"{node.target}_piece{i}"


def _get_piece(gm, graph: fx.Graph, node: fx.Node, dim: int, start: int, stop: int, i: int) -> fx.Node:
    if _is_cast(node):  # the piece of the parameter, cast as the whole was
        piece = _get_piece(gm, graph, node.args[0], dim, start, stop, i)
        new = graph.create_node(node.op, node.target, (piece, node.args[1]), {}, name=f"{node.name}_piece{i}")
        new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
        new.meta["val"] = piece.meta["val"].to(node.args[1])
        return new
    target = _piece_param(gm, node, dim, start, stop, i)
    new = graph.get_attr(target)
    name = node.meta["param"]
    new.meta.update({k: v for k, v in node.meta.items() if k not in ("val", "param", "param_aliases")})
    new.meta["val"] = node.meta["val"].narrow(dim, start, stop - start)
    new.meta["param"] = f"{name}_piece{i}"
    new.meta["param_aliases"] = (new.meta["param"],)
    new.meta["param_piece"] = FusedPiece(name, dim, start, stop)
    return new


def _rewrite(gm: fx.GraphModule, split: fx.Node) -> bool:
    match = _match(split)
    if match is None:
        return False
    mm, view, weight, bias, wdim = match
    graph = gm.graph
    sizes = list(split.args[1])
    pieces: list[fx.Node] = []
    start = 0
    with graph.inserting_before(mm):
        for i, size in enumerate(sizes):
            stop = start + size
            w = _get_piece(gm, graph, weight, wdim, start, stop, i)
            b = _get_piece(gm, graph, bias, 0, start, stop, i) if bias is not None else None
            if mm.meta["op"] == "addmm":
                args, kwargs = (b, mm.args[1], w), {}
                val = torch.addmm(b.meta["val"], mm.args[1].meta["val"], w.meta["val"])
            else:
                args, kwargs = (mm.args[0], w, b), {}
                val = torch.nn.functional.linear(mm.args[0].meta["val"], w.meta["val"],
                                                 b.meta["val"] if b is not None else None)
            new = graph.create_node("call_function", mm.target, args, kwargs, name=f"{mm.name}_piece{i}")
            new.meta.update({k: v for k, v in mm.meta.items() if k != "val"})
            new.meta["val"] = val
            if view is not None:
                shape = (*view.meta["val"].shape[:-1], size)
                out = graph.create_node("call_function", view.target, (new, shape), {}, name=f"{view.name}_piece{i}")
                out.meta.update({k: v for k, v in view.meta.items() if k != "val"})
                out.meta["val"] = val.reshape(shape)
                new = out
            pieces.append(new)
            start = stop
    for user in list(split.users):
        user.replace_all_uses_with(pieces[user.args[1]])
        graph.erase_node(user)
    casts = [n for n in (weight, bias) if n is not None and _is_cast(n)]
    for dead in (split, view, mm, *casts, *(n.args[0] for n in casts), *(n for n in (weight, bias)
                                                                          if n is not None and not _is_cast(n))):
        if dead is not None:
            graph.erase_node(dead)
    return True
