"""Canonical forms of the vision ops (convolution, batch norm, pooling, pad, roll).

Called by ``canonical._canonicalize_op`` for the names in ``VISION_NAMES``; each rewrite fixes
the target and a fully positional argument layout, with every size argument resolved to a
tuple of ints (so rules and codegen never parse defaults):

=================== ======================= ==================================================
key                 target                  args
=================== ======================= ==================================================
conv2d              F.conv2d                (x, weight, bias|None, stride, padding, dilation, groups)
                                            stride/dilation 2-tuples; padding a 2-tuple or "same"/"valid"
conv1d              F.conv1d                the same with 1-tuples
group_norm          F.group_norm            (x, num_groups, weight|None, bias|None, eps)
interpolate         F.interpolate           (x,) kwargs size, scale_factor, mode, align_corners,
                                            recompute_scale_factor, antialias as the model gave them
adaptive_avg_pool1d F.adaptive_avg_pool1d   (x, output_size: int)  resolved from the output
batch_norm          F.batch_norm            (x, running_mean|None, running_var|None, weight|None,
                                            bias|None, training, momentum, eps)
max_pool2d          F.max_pool2d            (x, kernel, stride, padding, dilation, ceil_mode)
avg_pool2d          F.avg_pool2d            (x, kernel, stride, padding, ceil_mode, count_include_pad,
                                            divisor_override)
adaptive_avg_pool2d F.adaptive_avg_pool2d   (x, output_size)  output_size resolved from the output
pad                 F.pad                   (x, pad: tuple, mode, value)
roll                torch.roll              (x, shifts: tuple, dims: tuple)  dims non-negative
=================== ======================= ==================================================

A spelling these rules do not recognise (``return_indices=True``, a flattening ``roll``) keeps
the model's own call under its name, and strategies treat it as an op without a rule.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

VISION_NAMES = frozenset({"conv2d", "conv1d", "batch_norm", "group_norm", "max_pool2d", "avg_pool2d",
                          "adaptive_avg_pool2d", "adaptive_avg_pool1d", "interpolate", "pad", "roll"})
_INTERPOLATE = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _set(node: fx.Node, key: str, target, args, kwargs=None) -> None:
    node.op, node.target, node.args, node.kwargs = "call_function", target, tuple(args), dict(kwargs or {})
    node.meta["op"] = key


def _tuple(v, n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)


def canonicalize_vision(node: fx.Node, name: str) -> bool:
    """Rewrite ``node`` (whose op name is in VISION_NAMES) to its canonical form; False if not recognised."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    xv = x.meta.get("val") if isinstance(x, fx.Node) else None
    out = node.meta.get("val")
    if not isinstance(xv, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    if name == "conv2d":
        padding = _arg(node, 4, "padding", 0)
        padding = padding if isinstance(padding, str) else _pair(padding)
        _set(node, "conv2d", F.conv2d, (x, _arg(node, 1, "weight"), _arg(node, 2, "bias"),
                                         _pair(_arg(node, 3, "stride", 1)), padding,
                                         _pair(_arg(node, 5, "dilation", 1)), int(_arg(node, 6, "groups", 1))))
    elif name == "conv1d":
        padding = _arg(node, 4, "padding", 0)
        padding = padding if isinstance(padding, str) else _tuple(padding, 1)
        _set(node, "conv1d", F.conv1d, (x, _arg(node, 1, "weight"), _arg(node, 2, "bias"),
                                         _tuple(_arg(node, 3, "stride", 1), 1), padding,
                                         _tuple(_arg(node, 5, "dilation", 1), 1), int(_arg(node, 6, "groups", 1))))
    elif name == "group_norm":
        _set(node, "group_norm", F.group_norm, (x, int(_arg(node, 1, "num_groups")), _arg(node, 2, "weight"),
                                                 _arg(node, 3, "bias"), _arg(node, 4, "eps", 1e-5)))
    elif name == "interpolate":
        given = {k: _arg(node, i + 1, k) for i, k in enumerate(_INTERPOLATE)}
        _set(node, "interpolate", F.interpolate, (x,), {k: v for k, v in given.items() if v is not None})
    elif name == "adaptive_avg_pool1d":
        _set(node, "adaptive_avg_pool1d", F.adaptive_avg_pool1d, (x, int(out.shape[-1])))
    elif name == "batch_norm":
        names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        defaults = (None, None, None, None, False, 0.1, 1e-5)
        rest = [_arg(node, i + 1, n, d) for i, (n, d) in enumerate(zip(names, defaults))]
        _set(node, "batch_norm", F.batch_norm, (x, *rest))
    elif name == "max_pool2d":
        if _arg(node, 6, "return_indices", False):
            return False
        kernel = _pair(_arg(node, 1, "kernel_size"))
        stride = _arg(node, 2, "stride") or kernel
        _set(node, "max_pool2d", F.max_pool2d, (x, kernel, _pair(stride), _pair(_arg(node, 3, "padding", 0)),
                                                 _pair(_arg(node, 4, "dilation", 1)), bool(_arg(node, 5, "ceil_mode"))))
    elif name == "avg_pool2d":
        kernel = _pair(_arg(node, 1, "kernel_size"))
        stride = _arg(node, 2, "stride") or kernel
        _set(node, "avg_pool2d", F.avg_pool2d, (x, kernel, _pair(stride), _pair(_arg(node, 3, "padding", 0)),
                                                 bool(_arg(node, 4, "ceil_mode", False)),
                                                 bool(_arg(node, 5, "count_include_pad", True)),
                                                 _arg(node, 6, "divisor_override")))
    elif name == "adaptive_avg_pool2d":
        _set(node, "adaptive_avg_pool2d", F.adaptive_avg_pool2d, (x, tuple(out.shape[-2:])))
    elif name == "pad":
        _set(node, "pad", F.pad, (x, tuple(int(p) for p in _arg(node, 1, "pad")), _arg(node, 2, "mode", "constant"),
                                  _arg(node, 3, "value", None)))
    elif name == "roll":
        dims = _arg(node, 2, "dims")
        if dims is None or dims == ():
            return False  # roll of the flattened tensor
        shifts = _arg(node, 1, "shifts")
        shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        _set(node, "roll", torch.roll, (x, shifts, tuple(d % xv.dim() for d in dims)))
    return node.meta.get("op") == name
