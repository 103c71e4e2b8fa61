"""Profiles of the vision ops (FLOPs and saved bytes on global shapes), used by ``profile.node_profile``.

- conv2d (conv1d alike), y (N, Co, Ho, Wo) from x (N, Ci, H, W) and w (Co, Ci/g, kh, kw):
  forward ``2 * numel(y) * (Ci/g) * kh * kw``; backward that again for each of x and w needing a
  gradient; saves x (for dw) and w (for dx; free, it is held anyway).
- batch_norm, group_norm: about 5 FLOPs per element forward, twice that backward; saves x and the per-channel
  mean and rstd (fp32).
- max_pool2d: one comparison per window element, saves x (PyTorch keeps the argmax indices,
  int64, the size of y); avg pools: one add per window element, save nothing.
- pad, roll: move elements (numel FLOPs, nothing saved).
"""
from __future__ import annotations

import math

import torch.fx as fx

from autopar.tracer.meta import TensorMeta

VISION_PROFILED = frozenset({"conv2d", "conv1d", "batch_norm", "group_norm", "max_pool2d", "avg_pool2d",
                             "adaptive_avg_pool2d", "adaptive_avg_pool1d", "pad", "roll"})


def _val(a):
    return a.meta.get("val") if isinstance(a, fx.Node) else None


def _grad(a) -> bool:
    v = _val(a)
    return v is not None and bool(getattr(v, "requires_grad", False))


def _nbytes(t) -> int:
    return TensorMeta.of(t).nbytes


def vision_profile(node: fx.Node, key: str) -> tuple[float, float, int]:
    """``(forward FLOPs, backward FLOPs, saved bytes)`` of one canonical vision node."""
    x, out = _val(node.args[0]), node.meta["val"]
    if key in ("conv2d", "conv1d"):
        w = _val(node.args[1])
        fwd = 2.0 * out.numel() * math.prod(w.shape[1:])
        bwd = fwd * (_grad(node.args[0]) + _grad(node.args[1]))
        held = isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr"
        return fwd, bwd, (_nbytes(x) if _grad(node.args[1]) and not held else 0)
    if key == "batch_norm":
        return 5.0 * x.numel(), 10.0 * x.numel(), _nbytes(x) + 8 * x.shape[1]
    if key == "group_norm":
        return 5.0 * x.numel(), 10.0 * x.numel(), _nbytes(x) + 8 * x.shape[0] * node.args[1]
    if key in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_avg_pool1d"):
        adaptive = key.startswith("adaptive")
        window = x.numel() / max(out.numel(), 1) if adaptive else math.prod(node.args[1]) * 1.0
        fwd = out.numel() * window
        saved = _nbytes(x) + 8 * out.numel() if key == "max_pool2d" else 0
        return fwd, fwd, saved
    return float(out.numel()), float(out.numel()), 0
