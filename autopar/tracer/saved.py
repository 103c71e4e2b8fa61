"""Bytes saved for backward, per node, each storage counted once: the saved set of a graph.

Autograd keeps, from forward to backward, the tensors each op saves. Summing per-op rules
overcounts: several ops save one storage (the layer-norm output read by the q, k and v
projections; q, k, v as views of one matmul output; ``silu(a) * b`` saving tensors ``silu``
saved already), and a product with a Python scalar saves nothing. So ``saved_bytes`` replays
each op that needs a gradient on ``meta`` tensors laid out as in eager (strides included),
with a ``saved_tensors_hooks`` pack hook that sees exactly what autograd saves, and sorts
each saved tensor into

- a view of (or the same tensor as) one of the op's inputs: that input's *storage root*, the
  node whose output owns the storage (views, ``reshape``-as-view, ``contiguous`` and ``to``
  that return their input, ``split``/``getitem``, ... resolved the same way);
- the op's own output: the node's own storage;
- anything else: bytes only this op keeps (norm statistics, dropout masks, a copy it made).

A storage is counted once, for the first node in graph order that saves it; op-private bytes
always count for their node. Storages of parameters and buffers never count (they are held
anyway). So the total over the graph is the bytes autograd holds at the end of forward, the
figure ``autopar.runtime.saved_probe`` measures; and the ILP's liveness (``solver/memory.py``)
holds a storage from its first saver's forward to that node's backward, the last to need it.
``meta["storage"]`` (a ``Storage``) keeps, per node, its outputs' roots and the roots it saves,
so that per-device accounts can key storages (``solver/checkpoint_saved.py``).

Attention (``sdpa``) is not replayed where CPU takes its fused kernel (no dropout, no mask that
needs a gradient, equal head dims, unit last stride; ``meta`` would take the math path). That
kernel saves q, k, v, the output, a float32 logsumexp (batch, heads, Lq) and the mask (a bool
mask as a float copy), and lays its output out like q: (B, S, H, E) seen as (B, H, S, E) when q
is, so that ``transpose(1, 2).contiguous()`` after it copies nothing.
An op that cannot be replayed keeps its rule-based ``profile.saved_bytes``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from autopar.tracer.meta import dtype_bytes
from autopar.tracer.ops import Prop, has

_NOT_OPS = ("placeholder", "get_attr", "output")


@dataclass(frozen=True, slots=True)
class Storage:
    """``node.meta["storage"]``: which storages a node's outputs live in and which it saves for backward.

    A storage is named by its root ``(node name, output index or None)``: the node whose output
    owns it (a view names its base's root). ``saves`` names parameters and buffers too (a plan that
    reshards one makes a copy that is saved); ``saved_bytes`` never counts them.
    """

    roots: tuple  # per output (one for a single tensor): its storage root, None for a non-tensor
    saves: tuple  # roots of the storages the node saves for backward (also those an earlier node saved)
    private: int  # bytes the node saves that live in no graph value (statistics, masks, copies)
    first: tuple = ()  # the roots of ``saves`` this node is the first to save, parameters and buffers apart


def saved_bytes(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Bytes each op node of ``gm`` saves for backward that no earlier node saved (see the module docstring).

    Nodes must carry ``meta["val"]`` and ``meta["profile"]``; a node missing from the result
    keeps its profile's figure. Writes ``meta["storage"]`` (a ``Storage``) on every tensor node.
    """
    replay = _Replay()
    out: dict[fx.Node, int] = {}
    counted: set = set()
    for node in gm.graph.nodes:
        saves = replay.run(node)
        if node not in replay.roots or node.op == "output":
            continue
        roots, private = saves if saves is not None else ((), 0)
        roots = sorted(roots, key=lambda r: (r[0].name, r[1] or 0))
        first = []
        if saves is not None and node.op not in _NOT_OPS:
            first = [r for r in roots if r[0].op != "get_attr" and r not in counted]  # parameters: held anyway
            out[node] = private + sum(replay.storage_bytes[r] for r in first)
            counted.update(first)
        node.meta["storage"] = Storage(tuple(None if r is None else _named(r) for r in replay.roots[node]),
                                       tuple(_named(r) for r in roots), private, tuple(_named(r) for r in first))
    return out


def _named(root: tuple) -> tuple[str, int | None]:
    return root[0].name, root[1]


class _Replay:
    """Per node: meta tensors with the eager layout of its outputs, and the storage root of each."""

    def __init__(self) -> None:
        self.layout: dict[fx.Node, object] = {}  # node -> meta tensor, or tuple of them
        self.roots: dict[fx.Node, tuple] = {}  # node -> per output, (root node, index or None) or None
        self.storage_bytes: dict[tuple, int] = {}

    def run(self, node: fx.Node):
        """Record ``node``'s layout and roots; return (saved storage roots, private bytes) or None."""
        val = node.meta.get("val")
        if not _has_tensor(val):
            return None
        self._own(node, val)  # default: every output owns its storage, laid out as traced
        if node.op in _NOT_OPS or not _needs_replay(node, val):
            return (), 0
        if node.meta.get("op") == "sdpa" and self._fused_attention(node):
            return self._sdpa(node)
        try:
            return self._replay(node)
        except Exception:  # an op meta cannot replay: keep its rule-based figure
            self._own(node, val)
            return None

    def _own(self, node: fx.Node, val) -> None:
        if isinstance(val, torch.Tensor):
            self.layout[node], self.roots[node] = _like(val), ((node, None),)
            self.storage_bytes[(node, None)] = _nbytes(val)
            return
        self.layout[node] = tuple(_like(v) if isinstance(v, torch.Tensor) else v for v in val)
        self.roots[node] = tuple((node, i) if isinstance(v, torch.Tensor) else None for i, v in enumerate(val))
        for i, v in enumerate(val):
            if isinstance(v, torch.Tensor):
                self.storage_bytes[(node, i)] = _nbytes(v)

    def _inputs(self, node: fx.Node):
        """Fresh meta tensors for the node's tensor arguments, and a map id(tensor) -> (storage root, tensor)."""
        fresh: dict[int, tuple] = {}

        def make(layout, root, grad: bool):
            t = torch.empty_strided(layout.shape, layout.stride(), dtype=layout.dtype, device="meta")
            if grad and t.dtype.is_floating_point:
                t.requires_grad_()
                if t.untyped_storage().nbytes() == t.numel() * t.element_size():  # dense: clone keeps strides
                    t = t.clone()  # not a leaf, so in-place ops replay too
            fresh[id(t)] = (root, t)  # holding t keeps its id unique
            return t

        def arg(a):
            if not isinstance(a, fx.Node):
                return a
            val = a.meta.get("val")
            if a not in self.layout:
                return val
            layout, roots = self.layout[a], self.roots[a]
            if isinstance(layout, torch.Tensor):
                return make(layout, roots[0], bool(val.requires_grad))
            return type(layout)(make(lay, r, bool(v.requires_grad)) if isinstance(lay, torch.Tensor) else lay
                                for lay, r, v in zip(layout, roots, val))

        args = fx.node.map_aggregate(node.args, arg)
        kwargs = fx.node.map_aggregate(node.kwargs, arg)
        return args, kwargs, fresh

    def _replay(self, node: fx.Node):
        args, kwargs, fresh = self._inputs(node)
        packed: list[torch.Tensor] = []

        def pack(t):
            packed.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = node.target(*args, **kwargs)
        outs = result if isinstance(result, (tuple, list)) else (result,)
        out_ids = {id(_base(o)): i for i, o in enumerate(outs) if isinstance(o, torch.Tensor)}
        # outputs that alias an input inherit its root; the others own their storage
        roots = tuple(fresh[id(_base(o))][0] if id(_base(o)) in fresh else (node, None if o is result else i)
                      if isinstance(o, torch.Tensor) else None for i, o in enumerate(outs))
        self.layout[node] = result if isinstance(result, torch.Tensor) else tuple(outs)
        self.roots[node] = roots
        saved, private, seen = set(), 0, set()
        for t in packed:
            b = _base(t)
            if id(b) in seen:
                continue
            seen.add(id(b))
            if id(b) in fresh:
                saved.add(fresh[id(b)][0])
            elif id(b) in out_ids:
                saved.add(roots[out_ids[id(b)]])
            else:
                private += b.untyped_storage().nbytes()
        return saved, private

    def _fused_attention(self, node: fx.Node) -> bool:
        """Whether CPU attention takes its fused kernel (else the math path, which ``meta`` replays)."""
        q, k, v = (self.layout.get(a) for a in node.args[:3])
        mask = node.kwargs.get("attn_mask")
        return (all(isinstance(t, torch.Tensor) and t.dim() in (3, 4) and t.stride(-1) == 1 for t in (q, k, v))
                and q.shape[-1] == k.shape[-1] == v.shape[-1] and not node.kwargs.get("dropout_p")
                and not (isinstance(mask, fx.Node) and mask.meta["val"].requires_grad))

    def _sdpa(self, node: fx.Node):
        """Fused attention's saves (module docstring); the output laid out (B, S, H, E)."""
        val = node.meta["val"]
        q = node.args[0].meta["val"]
        q_layout = self.layout.get(node.args[0])
        if val.dim() == 4 and isinstance(q_layout, torch.Tensor) and q_layout.stride(1) < q_layout.stride(2):
            b, h, s, e = val.shape  # q is (B, S, H, E) seen as (B, H, S, E): the output is laid out alike
            self.layout[node] = torch.empty(b, s, h, e, dtype=val.dtype, device="meta").permute(0, 2, 1, 3)
        saved = {self.roots[a][0] for a in node.args[:3] if a in self.roots}
        saved.add((node, None))
        private = math.prod(q.shape[:-1]) * 4  # logsumexp, float32
        mask = node.kwargs.get("attn_mask")
        if isinstance(mask, fx.Node):
            mval = mask.meta["val"]
            if mval.dtype == q.dtype:
                saved.add(self.roots[mask][0])
            else:
                private += mval.numel() * dtype_bytes(q.dtype)
        return saved, private


def _has_tensor(val) -> bool:
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in val)
    return isinstance(val, torch.Tensor)


def _needs_replay(node: fx.Node, val) -> bool:
    vals = val if isinstance(val, (tuple, list)) else (val,)
    grad = any(isinstance(v, torch.Tensor) and v.requires_grad for v in vals)
    return grad or has(node.meta.get("op"), Prop.VIEW | Prop.ALIAS | Prop.META)


def _like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * dtype_bytes(t.dtype)
