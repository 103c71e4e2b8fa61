"""Normalisation pass: rewrite every op node to its canonical form (``autopar.tracer.ops``).

``canonicalize(gm)`` walks the graph once. For each node it finds the op's *name*
(``Tensor`` method name, or ``__name__`` of the called function: ``operator.add``,
``torch.add`` and ``x.add`` are all ``"add"``), looks up a rule, and rewrites the node in
place to the canonical target and positional layout, using the meta values the tracer
recorded to resolve shapes: views get their output shape, transposes become a full
``permute``, chunk/split get explicit sizes, basic indexing gets one resolved entry per
dim, reduction/softmax dims become non-negative. It sets ``meta["op"]`` on every node and
turns every remaining ``call_method`` into a ``call_function`` on ``torch.Tensor.<name>``.
Dead pure nodes (an unused ``x.device``, say) are removed at the end.
"""
from __future__ import annotations

import inspect
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from autopar.tracer.canonical_tensor import TENSOR_NAMES, canonicalize_tensor
from autopar.tracer.canonical_vision import VISION_NAMES, canonicalize_vision
from autopar.tracer.inplace import functionalize
from autopar.tracer.ops import inplace_name

VIEW_NAMES = frozenset({"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"})
PERMUTE_NAMES = frozenset({"permute", "transpose", "swapaxes", "swapdims", "t"})
SPLIT_NAMES = frozenset({"split", "chunk", "split_with_sizes", "unbind", "tensor_split"})
MATMUL_NAMES = frozenset({"matmul", "mm", "bmm"})
REDUCE_NAMES = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}
_EFFECTFUL = frozenset({"setitem", "dropout", "rand", "randn", "randint"})  # never removed as dead code
SIZE_FACTORIES = frozenset({"zeros", "ones", "empty", "rand", "randn"})


def op_name(node: fx.Node) -> str:
    """The spelling-independent name of a node's op (``"add"`` for ``+``, ``torch.add``, ``x.add``)."""
    if node.op == "call_method":
        return node.target
    name = getattr(node.target, "__name__", str(node.target))
    return name.strip("_") if name.startswith("__") else name


def _val(a):
    return a.meta.get("val") if isinstance(a, fx.Node) else a


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _dim(d: int, ndim: int) -> int:
    return d % ndim if ndim > 0 else 0


def _set(node: fx.Node, key: str, target, args, kwargs=None) -> None:
    node.op, node.target, node.args, node.kwargs = "call_function", target, tuple(args), dict(kwargs or {})
    node.meta["op"] = key


def canonicalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s nodes in place to the canonical ops of ``autopar.tracer.ops``; returns ``gm``."""
    functionalize(gm.graph)  # in-place ops on fresh tensors become out of place (inplace.py)
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output"):
            node.meta["op"] = node.op
        elif node.op == "get_attr":
            node.meta["op"] = "param" if "param" in node.meta else "buffer"
        elif node.op == "call_module":  # never made by ColoTracer; named so later passes can say so
            node.meta["op"] = "module"
        else:
            _canonicalize_op(gm, node)
    _remove_dead_nodes(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return gm


def _canonicalize_op(gm: fx.GraphModule, node: fx.Node) -> None:
    if node.kwargs.get("inplace") is True:
        _functionalize_inplace(node)
    name = op_name(node)
    out = node.meta.get("val")
    x = node.args[0] if node.args else None
    xv = _val(x)
    if name in TENSOR_NAMES and node.op in ("call_function", "call_method") and canonicalize_tensor(node, name):
        return None
    if name == "getattr":
        attr = node.args[1]
        if attr in ("T", "mT", "mH", "H") and isinstance(xv, torch.Tensor):
            n = xv.dim()
            dims = list(reversed(range(n))) if attr in ("T", "H") else [*range(n - 2), n - 1, n - 2]
            return _set(node, "permute", torch.permute, (x, tuple(dims)))
        node.meta["op"] = "device" if attr == "device" else "getattr"
        return None
    if name in VIEW_NAMES and isinstance(out, torch.Tensor) and not _is_dtype_view(node):
        return _set(node, "view", torch.reshape, (x, tuple(out.shape)))
    if name in PERMUTE_NAMES and isinstance(out, torch.Tensor):
        return _set(node, "permute", torch.permute, (x, _permutation(node, name, xv.dim())))
    if name in ("expand", "expand_as") and isinstance(out, torch.Tensor):
        return _set(node, "expand", torch.Tensor.expand, (x, tuple(out.shape)))
    if name == "contiguous" or (name == "clone" and not _has_inplace_user(node)):
        return _set(node, "contiguous", torch.Tensor.contiguous, (x,))
    if name in SPLIT_NAMES and isinstance(xv, torch.Tensor) and isinstance(out, (tuple, list)):
        return _rewrite_split(gm, node, name, xv, out)
    if name == "getitem":
        return _rewrite_getitem(node, xv)
    if name in ("cat", "concat", "concatenate", "stack") and isinstance(out, torch.Tensor):
        key = "stack" if name == "stack" else "cat"
        dim = _arg(node, 1, "dim", node.kwargs.get("axis", 0))
        tensors = _elements(gm, node, x) if isinstance(x, fx.Node) else list(x)
        return _set(node, key, torch.stack if key == "stack" else torch.cat, (tensors, _dim(dim, out.dim())))
    if name in MATMUL_NAMES:
        return _set(node, "matmul", torch.matmul, (x, node.args[1]))
    if name == "linear" and node.target is F.linear:
        return _set(node, "linear", F.linear, (x, _arg(node, 1, "weight"), _arg(node, 2, "bias")))
    if name == "addmm" and _arg(node, 3, "beta", 1) == 1 and _arg(node, 4, "alpha", 1) == 1:
        return _set(node, "addmm", torch.addmm, (x, _arg(node, 1, "mat1"), _arg(node, 2, "mat2")))
    if name == "embedding" and node.target is F.embedding:
        return _set(node, "embedding", F.embedding, (x, _arg(node, 1, "weight")), _bind_rest(F.embedding, node, 2))
    if name in REDUCE_NAMES and isinstance(xv, torch.Tensor) and isinstance(out, torch.Tensor):
        return _rewrite_reduce(node, name, xv)
    if name in ("softmax", "log_softmax") and isinstance(xv, torch.Tensor):
        dim = _arg(node, 1, "dim")
        if dim is None:
            node.meta["op"] = name
            return None
        dtype_pos = 3 if node.target in (F.softmax, F.log_softmax) else 2  # F.softmax has _stacklevel at 2
        dtype = _arg(node, dtype_pos, "dtype")
        return _set(node, name, getattr(torch, name), (x, _dim(dim, xv.dim())), {"dtype": dtype} if dtype else {})
    if name == "layer_norm" and node.target is F.layer_norm:
        shape = tuple(_arg(node, 1, "normalized_shape"))
        args = (x, shape, _arg(node, 2, "weight"), _arg(node, 3, "bias"), _arg(node, 4, "eps", 1e-5))
        return _set(node, "layer_norm", F.layer_norm, args)
    if name == "rms_norm" and node.target is F.rms_norm:
        return _set(node, "rms_norm", F.rms_norm, (x, tuple(_arg(node, 1, "normalized_shape")), _arg(node, 2, "weight"),
                                                    _arg(node, 3, "eps")))
    if name in VISION_NAMES and node.op == "call_function" and canonicalize_vision(node, name):
        return None
    if name == "dropout" and node.target in (F.dropout, torch.dropout):
        training = _arg(node, 2, "training", node.kwargs.get("train", True))
        return _set(node, "dropout", F.dropout, (x, _arg(node, 1, "p", 0.5), training))
    if name == "scaled_dot_product_attention":
        kw = {"attn_mask": _arg(node, 3, "attn_mask"), "dropout_p": _arg(node, 4, "dropout_p", 0.0),
              "is_causal": _arg(node, 5, "is_causal", False), "scale": _arg(node, 6, "scale")}
        if _arg(node, 7, "enable_gqa", False):
            kw["enable_gqa"] = True
        return _set(node, "sdpa", F.scaled_dot_product_attention, node.args[:3], kw)
    if name == "cross_entropy" and node.target is F.cross_entropy:
        kwargs = _bind_rest(F.cross_entropy, node, 2)
        return _set(node, "cross_entropy", F.cross_entropy, (x, _arg(node, 1, "target")), kwargs)
    if name in SIZE_FACTORIES and node.op == "call_function" and isinstance(out, torch.Tensor):
        if node.args and not isinstance(node.args[0], (tuple, list, torch.Size)):
            node.args = (tuple(out.shape),)
    key = name
    if node.op == "call_method":
        method = getattr(torch.Tensor, name, None)
        if method is not None:
            _set(node, key, method, node.args, node.kwargs)
    node.meta["op"] = key
    return None


def _elements(gm: fx.GraphModule, node: fx.Node, seq: fx.Node) -> list[fx.Node]:
    """``torch.cat(x.split(...))``: one ``getitem`` per element of the tuple-valued ``seq``, so no op takes a
    whole tuple (only getitems read tuple-valued nodes, and each element is planned on its own)."""
    out = []
    for i, val in enumerate(seq.meta["val"]):
        with gm.graph.inserting_before(node):
            item = gm.graph.call_function(operator.getitem, (seq, i))
        item.meta.update(val=val, op="getitem")
        out.append(item)
    return out


def _functionalize_inplace(node: fx.Node) -> None:
    """``f(x, inplace=True)`` (``nn.ReLU(inplace=True)``) -> ``f(x)``, and every later reader of x reads
    the result instead, which is what it saw in eager. A sharded x may be a fresh resharded copy, or a
    view autograd forbids to modify, so the runtime never writes into an op's input."""
    node.kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node):
        return
    later = set(x.users) - {node}
    cur = node.next
    while later and cur.op != "root":
        if cur in later:
            cur.replace_input_with(x, node)
            later.discard(cur)
        cur = cur.next


def _is_dtype_view(node: fx.Node) -> bool:
    dtype = node.args[1] if len(node.args) == 2 else node.kwargs.get("dtype")
    return isinstance(dtype, torch.dtype)


def _has_inplace_user(node: fx.Node) -> bool:
    for user in node.users:
        name = op_name(user)
        if inplace_name(name) or name == "setitem":
            return True
    return False


def _permutation(node: fx.Node, name: str, ndim: int) -> tuple[int, ...]:
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 1 else (node.kwargs["dims"],)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
            dims = dims[0]
        return tuple(_dim(d, ndim) for d in dims)
    perm = list(range(ndim))
    if name == "t":
        return tuple(reversed(perm)) if ndim == 2 else tuple(perm)
    d0 = _dim(_arg(node, 1, "dim0"), ndim)
    d1 = _dim(_arg(node, 2, "dim1"), ndim)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return tuple(perm)


def _rewrite_split(gm: fx.GraphModule, node: fx.Node, name: str, xv: torch.Tensor, out) -> None:
    """split/chunk/unbind -> ``torch.split(x, sizes, dim)``; unbind adds a view per element."""
    default_dim = 0
    dim = _dim(_arg(node, 2 if name != "unbind" else 1, "dim", default_dim), xv.dim())
    if name == "unbind":
        _set(node, "split", torch.split, (node.args[0], [1] * len(out), dim))
        node.meta["val"] = tuple(t.unsqueeze(dim) for t in out)
        for user in list(node.users):
            if op_name(user) != "getitem":
                continue
            with gm.graph.inserting_after(user):
                view = gm.graph.call_function(torch.reshape, (user, tuple(user.meta["val"].shape)))
            view.meta.update(user.meta)
            view.meta["op"] = "view"
            user.replace_all_uses_with(view, delete_user_cb=lambda u, v=view: u is not v)
            user.meta["val"] = node.meta["val"][user.args[1]]
        return None
    sizes = [int(t.shape[dim]) for t in out]
    return _set(node, "split", torch.split, (node.args[0], sizes, dim))


def _rewrite_getitem(node: fx.Node, xv) -> None:
    """Element of a tuple -> ``getitem``; basic tensor indexing -> ``slice`` with one resolved
    entry per input dim (plus None for new dims); tensor/list indexing -> ``index``."""
    seq, index = node.args[0], node.args[1]
    if not isinstance(xv, torch.Tensor):
        return _set(node, "getitem", operator.getitem, (seq, index))
    items = index if isinstance(index, tuple) else (index,)
    if any(_is_advanced(i) for i in items):
        return _set(node, "index", operator.getitem, (seq, index))
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    resolved, dim = [], 0
    for i in items:
        if i is Ellipsis:
            for _ in range(xv.dim() - consumed):
                resolved.append(slice(*slice(None).indices(xv.shape[dim])))
                dim += 1
        elif i is None:
            resolved.append(None)
        elif isinstance(i, slice):
            resolved.append(slice(*i.indices(xv.shape[dim])))
            dim += 1
        else:
            resolved.append(_dim(int(i), xv.shape[dim]))
            dim += 1
    while dim < xv.dim():
        resolved.append(slice(*slice(None).indices(xv.shape[dim])))
        dim += 1
    return _set(node, "slice", operator.getitem, (seq, tuple(resolved)))


def _is_advanced(i) -> bool:
    if isinstance(i, slice):
        return any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step))
    if isinstance(i, fx.Node):
        return True
    return isinstance(i, (list, torch.Tensor, bool))


def _rewrite_reduce(node: fx.Node, name: str, xv: torch.Tensor) -> None:
    dims = _arg(node, 1, "dim")
    if isinstance(dims, torch.dtype):  # torch.sum(x, dtype) spelled positionally
        dims = None
    if dims is None or dims == () or dims == []:
        dims = tuple(range(xv.dim()))
    elif isinstance(dims, int):
        dims = (dims,)
    dims = tuple(sorted(_dim(d, xv.dim()) for d in dims))
    keepdim = bool(_arg(node, 2, "keepdim", False))
    kwargs = {"dtype": node.kwargs["dtype"]} if node.kwargs.get("dtype") is not None else {}
    return _set(node, name, REDUCE_NAMES[name], (node.args[0], dims, keepdim), kwargs)


def _bind_rest(fn, node: fx.Node, n_positional: int) -> dict:
    """Keyword arguments beyond the first ``n_positional``, by name, as the model gave them."""
    params = list(inspect.signature(fn).parameters)
    kwargs = {params[i]: a for i, a in enumerate(node.args) if i >= n_positional}
    kwargs.update({k: v for k, v in node.kwargs.items() if k not in params[:n_positional]})
    return kwargs


def _remove_dead_nodes(graph: fx.Graph) -> None:
    """Erase op nodes nobody uses, except in-place and random ops (they have effects)."""
    for node in reversed(list(graph.nodes)):
        if node.op not in ("call_function", "call_method", "get_attr") or node.users or node.meta.get("unread"):
            continue
        name = op_name(node)
        if inplace_name(name) or name in _EFFECTFUL or updates_statistics(node, name):
            continue
        if node.op == "call_function" and node.target is operator.setitem:
            continue
        graph.erase_node(node)


def updates_statistics(node: fx.Node, name: str | None = None) -> bool:
    """Whether ``node`` is a training-mode batch_norm with running statistics: it writes them whether or not
    its output is read (fuzz seed 243), and running it again would write them twice (solver/checkpoint.py).
    ``training`` is the sixth argument of both ``F.batch_norm`` and ``torch.batch_norm``."""
    if (name or node.meta.get("op")) != "batch_norm":
        return False
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    stats = [*node.args[1:3], node.kwargs.get("running_mean"), node.kwargs.get("running_var")]
    return bool(training) and any(isinstance(a, fx.Node) for a in stats)
