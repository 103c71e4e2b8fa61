"""What the tracer writes into ``node.meta`` (the contract every later stage reads).

``node.meta`` keys written by ``autopar.trace``:

- ``"val"``: the meta value the node produced: a meta ``torch.Tensor``, a tuple/list of
  them, or a plain Python value (int, float, bool, None, torch.dtype, ...).
- ``"tensor"``: ``TensorMeta`` for a tensor output, a tuple of ``TensorMeta | None`` for a
  tuple/list output, ``None`` otherwise.
- ``"op"``: the canonical op key (see ``autopar.tracer.ops``).
- ``"profile"``: ``NodeProfile`` (FLOPs and bytes of the *global* tensors).
- ``"source"``: ``"file.py:123 in forward: <code line>"``, the user's line that made the node
  (``""`` for nodes autopar made itself).
- ``"param"``: for ``get_attr`` nodes, the qualified name in the original model
  (``"transformer.h.0.attn.c_attn.weight"``); tied weights share one node.
- ``"param_aliases"``: for parameter ``get_attr`` nodes, every qualified name of that Parameter
  in the model, first name first (``("transformer.wte.weight", "lm_head.weight")`` when tied).
- ``"param_piece"``: for a piece of a fused projection's weight (``fused.py``), ``(original
  name, dim, start, stop)``; its ``"param"`` is ``"<original name>_piece<i>"``.
- ``"storage"``: a ``saved.Storage``: the storage roots of the node's outputs and the roots it saves
  for backward, each storage counted once over the graph (``autopar/tracer/saved.py``).
- ``"stack_trace"``: fx's own record of the Python stack that made the node (``"source"`` is
  read from it).

The output node's ``"val"`` is the tuple of its values and its ``"tensor"`` a tuple of
``TensorMeta | None``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch


class TensorMeta(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorMeta:
        return cls(tuple(int(s) for s in t.shape), t.dtype, bool(t.requires_grad))


@dataclass(frozen=True, slots=True)
class NodeProfile:
    fwd_flops: float  # FLOPs of the forward op on global shapes
    bwd_flops: float  # FLOPs of its backward (0 when nothing upstream needs a gradient)
    out_bytes: int  # bytes of the output tensor(s)
    saved_bytes: int  # bytes this op saves for backward that no other node already holds


def dtype_bytes(dtype: torch.dtype) -> int:
    if dtype == torch.bool:
        return 1
    return torch.empty((), dtype=dtype).element_size()


def is_multi(tm) -> bool:
    """True for the ``"tensor"`` entry of a tuple/list-valued node (TensorMeta is itself a NamedTuple)."""
    return isinstance(tm, tuple) and not isinstance(tm, TensorMeta)


def tensor_meta(node) -> TensorMeta | None:
    """The node's single-tensor ``TensorMeta`` (first element for tuple outputs), or None."""
    tm = node.meta.get("tensor")
    if is_multi(tm):
        return next((t for t in tm if t is not None), None)
    return tm
