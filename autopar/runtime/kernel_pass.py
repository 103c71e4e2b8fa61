"""Kernel pass: swap canonical ops in a GraphModule for autopar's Triton kernels.

A graph -> graph pass. Each ``call_function`` node whose ``meta["op"]`` is one of

=============== =============================================== =====================================
op              canonical form (``autopar.tracer.ops``)         becomes
=============== =============================================== =====================================
sdpa            F.sdpa(q, k, v, attn_mask=, dropout_p=,         flash_attention(q, k, v, causal=, scale=)
                is_causal=, scale=)
layer_norm      F.layer_norm(x, (n,), w, b, eps)                layer_norm(x, w, b, eps)
rms_norm        F.rms_norm(x, (n,), w, eps)                     rms_norm(x, w, eps)
softmax         torch.softmax(x, dim)                           softmax(x, dim)
cross_entropy   F.cross_entropy(logits, target, **kwargs)       cross_entropy(logits, target, ignore_index=, reduction=)
=============== =============================================== =====================================

is rewritten in place (same name, same meta, plus ``meta["kernel"]``) when its arguments are
ones the kernel implements; otherwise it is left alone: sdpa with an attn_mask, dropout_p > 0
or enable_gqa; norms over more than the last dim; softmax with a dtype; cross_entropy with
class weights, label smoothing, legacy size_average/reduce, or non-2-d logits. At run time
each kernel still falls back to torch for tensors it cannot take (see ``autopar.kernels``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from autopar.errors import AutoparError


@dataclass(frozen=True, slots=True)
class Substitution:
    """One node now calling a kernel: ``str`` reads ``%attn: sdpa -> flash_attention``."""

    node: str
    op: str
    kernel: str

    def __str__(self) -> str:
        return f"%{self.node}: {self.op} -> {self.kernel}"


def kernels_enabled(device, kernels: bool | None) -> bool:
    """Whether to swap kernels in for a model running on ``device``.

    None (the default) means yes on CUDA, no elsewhere. An explicit True on a non-CUDA device
    needs Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before triton is imported).
    """
    from autopar.kernels._common import HAVE_TRITON, WHY_NOT

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if kernels is None:
        if dev.type == "cuda" and not HAVE_TRITON:
            warnings.warn(f"autopar: Triton kernels are off ({WHY_NOT}); the model runs torch's own ops", stacklevel=2)
            return False
        return dev.type == "cuda"
    if not kernels:
        return False
    if not HAVE_TRITON:
        raise AutoparError(f"kernels=True, but Triton is not available ({WHY_NOT}): install triton, or leave "
                           f"kernels=None (on CUDA only, when Triton works)")
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    raise AutoparError(
        f"kernels=True, but the model runs on {dev} and Triton kernels need a GPU: run on a CUDA device, "
        f"or set TRITON_INTERPRET=1 before importing triton to use Triton's (slow) CPU interpreter, "
        f"or pass kernels=False")


def _shape(node) -> tuple[int, ...] | None:
    """The node's output shape from the tracer's meta, if known."""
    meta = getattr(node, "meta", None) or {}
    tensor = meta.get("tensor")
    if tensor is not None and hasattr(tensor, "shape"):
        return tuple(tensor.shape)
    val = meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _sdpa(node: fx.Node, k):
    q, key, v = _arg(node, 0, "query"), _arg(node, 1, "key"), _arg(node, 2, "value")
    if _arg(node, 3, "attn_mask") is not None or _arg(node, 4, "dropout_p", 0.0) not in (0, 0.0):
        return None
    if _arg(node, 7, "enable_gqa", False):
        return None
    causal, scale = _arg(node, 5, "is_causal", False), _arg(node, 6, "scale")
    if not isinstance(causal, bool) or isinstance(scale, fx.Node):
        return None
    shape = _shape(q)
    if shape is not None and (len(shape) != 4 or shape[-1] not in (16, 32, 64, 128)):
        return None
    return k.flash_attention, (q, key, v), {"causal": causal, "scale": scale}


def _layer_norm(node: fx.Node, k):
    x, normalized_shape = _arg(node, 0, "input"), _arg(node, 1, "normalized_shape")
    weight, bias, eps = _arg(node, 2, "weight"), _arg(node, 3, "bias"), _arg(node, 4, "eps")
    if normalized_shape is None or len(tuple(normalized_shape)) != 1:
        return None
    return k.layer_norm, (x, weight, bias, 1e-5 if eps is None else eps), {}


def _rms_norm(node: fx.Node, k):
    x, normalized_shape = _arg(node, 0, "input"), _arg(node, 1, "normalized_shape")
    weight, eps = _arg(node, 2, "weight"), _arg(node, 3, "eps")
    if normalized_shape is None or len(tuple(normalized_shape)) != 1:
        return None
    return k.rms_norm, (x, weight, eps), {}


def _softmax(node: fx.Node, k):
    x, dim = _arg(node, 0, "input"), _arg(node, 1, "dim")
    if _arg(node, 2, "dtype") is not None or not isinstance(dim, int):
        return None
    return k.softmax, (x, dim), {}


def _cross_entropy(node: fx.Node, k):
    logits, target = _arg(node, 0, "input"), _arg(node, 1, "target")
    kw = dict(node.kwargs)
    if len(node.args) > 2 or kw.get("weight") is not None or kw.get("label_smoothing", 0.0) not in (0, 0.0):
        return None
    if kw.get("size_average") is not None or kw.get("reduce") is not None:
        return None
    reduction, ignore_index = kw.get("reduction", "mean"), kw.get("ignore_index", -100)
    if reduction not in ("mean", "sum", "none") or not isinstance(ignore_index, int):
        return None
    shape = _shape(logits)
    if shape is not None and len(shape) != 2:
        return None
    return k.cross_entropy, (logits, target), {"ignore_index": ignore_index, "reduction": reduction}


RULES = {"sdpa": _sdpa, "layer_norm": _layer_norm, "rms_norm": _rms_norm, "softmax": _softmax,
         "cross_entropy": _cross_entropy}


def _on_cuda(gm: fx.GraphModule) -> bool:
    tensors = list(gm.parameters()) + list(gm.buffers())
    if tensors:
        return any(t.is_cuda for t in tensors)
    return torch.cuda.is_available()


def swap_kernels(gm: fx.GraphModule, *, force: bool = False) -> list[Substitution]:
    """Replace supported sdpa / layer_norm / rms_norm / softmax / cross_entropy nodes by Triton kernels.

    Runs when the module's parameters live on CUDA (or, without parameters, CUDA is available),
    or when ``force`` (tests under TRITON_INTERPRET=1); otherwise returns [] and changes nothing.
    Rewrites nodes in place, recompiles ``gm``, and returns one record per substituted node.
    """
    if not (force or _on_cuda(gm)):
        return []
    from autopar import kernels  # imported here: triton decides interpreter vs GPU at import time

    done: list[Substitution] = []
    for node in gm.graph.nodes:
        op = node.meta.get("op")
        if node.op != "call_function" or op not in RULES:
            continue
        rewrite = RULES[op](node, kernels)
        if rewrite is None:
            continue
        fn, args, kwargs = rewrite
        node.target, node.args, node.kwargs = fn, args, kwargs
        node.meta["kernel"] = fn.__name__
        done.append(Substitution(node.name, op, fn.__name__))
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
