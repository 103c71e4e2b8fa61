"""Profiling pass: ``meta["tensor"]``, ``meta["profile"]`` and ``meta["source"]`` for every node.

``profile_graph(gm)`` runs after ``canonicalize`` and reads only metadata (no tensor is
allocated). All numbers are for the *global* (unsharded) tensors:

- forward FLOPs: ``2*M*K*N`` for matmul-like ops (``linear``, ``addmm``, ``matmul``; the
  bias add of ``linear``/``addmm`` is not counted), the output numel for pointwise ops,
  a few ops per element for norms, softmax and cross-entropy, 0 for views and copies;
- backward FLOPs: for matmul-like ops ``2*M*K*N`` per input that needs a gradient (so about
  2x forward), about 2x forward elsewhere, and 0 when the output needs no gradient;
- output bytes: the bytes of the output tensor(s), views included;
- saved bytes: what autograd keeps for backward, each storage once, for the first node that
  saves it, not counting parameters and buffers (held anyway): ``saved.saved_bytes`` replays
  each op on meta to see it. Where an op cannot be replayed, a rule stands in: linear saves
  its input, nonlinear pointwise ops one input, softmax its output, views nothing. 0 when the
  output needs no gradient.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import torch
import torch.fx as fx

from autopar.tracer.meta import NodeProfile, TensorMeta
from autopar.tracer.ops import POINTWISE, POINTWISE_LINEAR, Prop, has
from autopar.tracer.profile_vision import VISION_PROFILED, vision_profile
from autopar.tracer.saved import saved_bytes

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)\n\s*(?P<code>[^\n]*)')
_SKIP_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
# Pointwise ops that save their output instead of an input, or save nothing beyond a mask.
_NORM_FLOPS = {"layer_norm": 5, "rms_norm": 4, "softmax": 5, "log_softmax": 5, "cross_entropy": 6}


def profile_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Annotate every node of ``gm`` with ``tensor``, ``profile`` and ``source``; returns ``gm``.

    Saved bytes come from the graph's saved set (``saved.saved_bytes``: each storage counted once,
    for its first saver); the per-op rules of ``node_profile`` stand where an op cannot be replayed.
    """
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        node.meta["tensor"] = _tensor_meta(val)
        node.meta["source"] = source_of(node)
        node.meta["profile"] = node_profile(node)
    for node, saved in saved_bytes(gm).items():
        node.meta["profile"] = dataclasses.replace(node.meta["profile"], saved_bytes=int(saved))
    return gm


def _tensor_meta(val):
    if isinstance(val, torch.Tensor):
        return TensorMeta.of(val)
    if isinstance(val, (tuple, list)):
        return tuple(TensorMeta.of(v) if isinstance(v, torch.Tensor) else None for v in val)
    return None


def source_of(node: fx.Node) -> str:
    """``"file.py:123 in forward: <code>"`` for the innermost model frame of the node's stack trace."""
    trace = node.meta.get("stack_trace") or ""
    frames = [m for m in _FRAME.finditer(trace) if not os.path.abspath(m["file"]).startswith(_SKIP_DIRS)]
    if not frames:
        return ""
    m = frames[-1]
    return f"{os.path.basename(m['file'])}:{m['line']} in {m['fn']}: {m['code'].strip()}"


def _tensors(args) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    fx.node.map_aggregate(args, lambda a: out.append(a.meta["val"]) if isinstance(a, fx.Node) and isinstance(
        a.meta.get("val"), torch.Tensor) else None)
    return out


def _nbytes(t: torch.Tensor) -> int:
    return TensorMeta.of(t).nbytes


def _is_held(a) -> bool:
    """Parameters and buffers live all along: saving them for backward costs nothing extra."""
    return isinstance(a, fx.Node) and a.op == "get_attr"


def _needs_grad(a) -> bool:
    return isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].requires_grad


def node_profile(node: fx.Node) -> NodeProfile:
    """The ``NodeProfile`` of one canonical node (see the module docstring for the rules)."""
    val = node.meta.get("val")
    outs = [v for v in (val if isinstance(val, (tuple, list)) else [val]) if isinstance(v, torch.Tensor)]
    out_bytes = sum(_nbytes(t) for t in outs)
    if node.op not in ("call_function", "call_method") or not outs:
        return NodeProfile(0.0, 0.0, out_bytes, 0)
    key = node.meta.get("op", "")
    out = outs[0]
    grad = any(t.requires_grad for t in outs)
    numel = sum(t.numel() for t in outs)
    args = node.args

    if key == "einsum":
        sizes: dict[str, int] = {}
        for term, a in zip(args[0].split("->")[0].split(","), args[1:]):
            for c, n in zip(term, a.meta["val"].shape):
                sizes[c] = max(sizes.get(c, 1), n)
        fwd = 2.0 * math.prod(sizes.values())  # every letter's index, once: a multiply and an add
        bwd = fwd * sum(_needs_grad(a) for a in args[1:])
        saved = sum(_nbytes(a.meta["val"]) for a in args[1:] if not _is_held(a)) if bwd else 0
    elif key in ("linear", "addmm", "matmul", "baddbmm"):
        a, b = (args[0], args[1]) if key not in ("addmm", "baddbmm") else (args[1], args[2])
        av, bv = a.meta["val"], b.meta["val"]
        k = av.shape[-1] if av.dim() else 1
        fwd = 2.0 * out.numel() * k  # (M, K) x (K, N): 2*M*K*N
        bwd = fwd * (_needs_grad(a) + _needs_grad(b))
        saved = (_nbytes(av) if _needs_grad(b) and not _is_held(a) else 0) + (
            _nbytes(bv) if _needs_grad(a) and not _is_held(b) else 0)
    elif key == "sdpa":
        q, k_, v = (arg.meta["val"] for arg in args[:3])
        batch = math.prod(q.shape[:-2])
        lq, e, s, ev = q.shape[-2], q.shape[-1], k_.shape[-2], v.shape[-1]
        fwd = 2.0 * batch * lq * s * (e + ev) + 5.0 * batch * lq * s  # QK^T, PV, softmax
        bwd = 2.0 * fwd
        saved = sum(_nbytes(t) for t in (q, k_, v, out)) + batch * lq * 4  # + logsumexp
    elif key == "embedding":
        fwd, bwd = 0.0, float(numel) if _needs_grad(args[1]) else 0.0
        saved = _nbytes(args[0].meta["val"])
    elif key in _NORM_FLOPS:
        x = args[0].meta["val"]
        fwd = float(_NORM_FLOPS[key] * x.numel())
        bwd = 2.0 * fwd
        if key in ("softmax", "log_softmax"):
            saved = out_bytes
        elif key == "cross_entropy":
            saved = _nbytes(x) + _nbytes(args[1].meta["val"])
        else:
            rows = x.numel() // max(1, math.prod(args[1]))
            saved = (0 if _is_held(args[0]) else _nbytes(x)) + rows * 8  # input + mean/rstd (fp32)
    elif key in ("sum", "mean", "amax", "amin"):
        x = args[0].meta["val"]
        fwd, bwd = float(x.numel()), float(x.numel())
        saved = 0 if key in ("sum", "mean") else _nbytes(x)
    elif key == "dropout":
        active = args[2] and args[1] > 0
        fwd = 2.0 * numel if active else 0.0
        bwd = float(numel) if active else 0.0
        saved = numel if active else 0  # a bool mask
    elif key in VISION_PROFILED:
        fwd, bwd, saved = vision_profile(node, key)
    elif has(key, Prop.SHAPE | Prop.META):
        fwd = bwd = 0.0
        saved = 0
    elif key in POINTWISE:
        fwd = float(numel)
        bwd = float(numel) * (1 if key in POINTWISE_LINEAR else 2)
        saved = 0 if has(key, Prop.SAVES_NOTHING) else _saved_inputs(node, key, out_bytes)
    else:  # unknown op: one FLOP per output element; conservatively saves its non-parameter inputs
        fwd, bwd = float(numel), float(numel)
        saved = sum(_nbytes(t) for a in _arg_nodes(node) if not _is_held(a) for t in _tensors(a))
    if not grad:
        bwd, saved = 0.0, 0
    return NodeProfile(fwd, bwd, out_bytes, int(saved))


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _saved_inputs(node: fx.Node, key: str, out_bytes: int) -> int:
    """Pointwise: mul saves the other operand(s); unary nonlinear ops save one tensor."""
    tensors = [a for a in node.args if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)]
    if key in ("tanh", "sigmoid", "exp"):  # backward reads the output
        return out_bytes
    if key in ("mul", "imul", "div", "truediv", "pow", "where", "masked_fill", "minimum", "maximum"):
        return sum(_nbytes(a.meta["val"]) for a in tensors if not _is_held(a))
    if key in ("eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "bitwise_not",
               "and_", "or_", "invert"):
        return 0
    return _nbytes(tensors[0].meta["val"]) if tensors and not _is_held(tensors[0]) else 0
