"""``MetaProxy``: an fx Proxy that carries the meta value of its node.

Every node the ``ColoTracer`` records is also executed on ``meta`` (see
``ColoTracer.create_proxy``), and the result is stored in ``node.meta["val"]``. The proxy
uses that value to answer the questions Python control flow asks while tracing:

- shape questions (``x.shape``, ``x.size()``, ``x.dim()``, ``len(x)``, ``x.numel()``,
  ``x.dtype``, iterating/unpacking a tensor or a tuple) return concrete Python values;
- ``x.device`` stays a graph value (a ``getattr(x, "device")`` node) so the traced graph
  runs on whatever device its inputs are on;
- anything that needs the *data* of a tensor (``bool(t)``, ``int(t)``, ``t.item()``) raises
  ``TraceError`` with the user's source line and what to do.
"""
from __future__ import annotations

import operator
import os
import traceback

import torch
import torch.fx as fx

from autopar.errors import AutoparError

# Tensor attributes answered from the meta value (plain Python values, no graph node).
CONCRETE_ATTRS = frozenset({
    "shape", "dtype", "ndim", "layout", "requires_grad", "is_sparse", "is_quantized", "is_nested",
    "is_cuda", "is_cpu", "is_mps", "is_xla", "is_complex_dtype", "itemsize", "names",
})
# Tensor methods answered from the meta value.
CONCRETE_METHODS = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "element_size",
    "is_floating_point", "is_complex", "is_signed", "storage_offset", "get_device", "has_names",
})
# Tensor methods that read tensor data: impossible on meta, so the trace stops with a hint.
DATA_METHODS = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"})
DATA_FUNCTIONS = (torch.equal, torch.is_nonzero, torch.allclose)

_TORCH_DIR = os.path.dirname(torch.__file__)
_TRACER_DIR = os.path.dirname(os.path.abspath(__file__))


class TraceError(AutoparError):
    """The model cannot be traced as written (data-dependent control flow, an op that fails on meta).

    The message names the graph node involved, the model's source line and what to do.
    """


def user_frame() -> traceback.FrameSummary | None:
    """The innermost stack frame outside torch and this package: the model's line being traced."""
    for frame in reversed(traceback.extract_stack()):
        f = os.path.abspath(frame.filename)
        if f.startswith(_TORCH_DIR) or f.startswith(_TRACER_DIR) or "/importlib/" in f:
            continue
        return frame
    return None


def format_frame(frame: traceback.FrameSummary | None) -> str:
    """``"file.py:123 in forward: <code>"`` (path shortened to its last two parts)."""
    if frame is None:
        return "<unknown source>"
    short = "/".join(frame.filename.split(os.sep)[-2:])
    return f"{short}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"


def data_dependent_error(node: fx.Node, what: str) -> TraceError:
    """The error raised when Python code needs the value (not the shape) of a traced tensor."""
    where = format_frame(user_frame())
    return TraceError(
        f"data-dependent control flow at {where}\n  {what} of %{node.name} (a tensor computed by the model) "
        f"is needed while tracing, but tracing runs on meta tensors that have shapes and no values."
        f"\n  What to do: make the branch depend on shapes only (x.shape, x.dim(), config values), "
        f"or pass the value as a plain Python value through `concrete_args` / the example inputs."
    )


def _val(p: fx.Proxy):
    return p.node.meta.get("val")


class MetaProxy(fx.Proxy):
    """A Proxy whose node carries ``meta["val"]``; shape queries resolve to concrete values."""

    def __repr__(self) -> str:
        return f"MetaProxy({self.node.name}: {_describe(_val(self))})"

    def __getattr__(self, k: str):
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        val = _val(self)
        if isinstance(val, torch.Tensor):
            if k in CONCRETE_ATTRS:
                return getattr(val, k)
            if not hasattr(val, k):
                raise AttributeError(f"'Tensor' object has no attribute '{k}'")
            if k == "is_meta":
                return False  # the traced graph runs on real devices
            if callable(getattr(val, k, None)):
                return fx.proxy.Attribute(self, k)  # a method: recorded when called
            # A tensor-valued attribute (.T, .mT, .device, .real, ...): a graph node now.
            return self.tracer.create_proxy("call_function", getattr, (self, k), {})
        if isinstance(val, torch.device):
            return getattr(val, k) if k != "type" else val.type
        if val is not None and not isinstance(val, (tuple, list)) and hasattr(val, k):
            return getattr(val, k)
        return fx.proxy.Attribute(self, k)

    def __len__(self) -> int:
        val = _val(self)
        if isinstance(val, (torch.Tensor, tuple, list, dict)):
            return len(val)
        raise TypeError(f"len() of %{self.node.name} ({_describe(val)})")

    def __iter__(self):
        val = _val(self)
        if isinstance(val, (torch.Tensor, tuple, list)):
            return iter([self[i] for i in range(len(val))])
        return super().__iter__()

    def keys(self):
        val = _val(self)
        if isinstance(val, dict):
            return val.keys()
        return super().keys()

    def __bool__(self) -> bool:
        val = _val(self)
        if isinstance(val, torch.Tensor) or val is None:
            raise data_dependent_error(self.node, "the truth value")
        return bool(val)

    def __int__(self) -> int:
        if isinstance(_val(self), torch.Tensor):
            raise data_dependent_error(self.node, "the integer value")
        return int(_val(self))

    def __float__(self) -> float:
        if isinstance(_val(self), torch.Tensor):
            raise data_dependent_error(self.node, "the float value")
        return float(_val(self))

    def __index__(self) -> int:
        if isinstance(_val(self), torch.Tensor):
            raise data_dependent_error(self.node, "the index value")
        return int(_val(self))

    def __setitem__(self, index, value) -> None:
        """``x[index] = value``: recorded as ``operator.setitem`` (an in-place op, kept by dead-code removal)."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    def __contains__(self, item) -> bool:
        val = _val(self)
        if isinstance(val, (dict, tuple, list)) and not isinstance(item, fx.Proxy):
            return item in val
        raise data_dependent_error(self.node, "membership (`in`)")


def _describe(val) -> str:
    if isinstance(val, torch.Tensor):
        return f"Tensor{tuple(val.shape)} {str(val.dtype).removeprefix('torch.')}"
    return type(val).__name__
