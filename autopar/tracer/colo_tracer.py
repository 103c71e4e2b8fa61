"""``ColoTracer``: an fx Tracer that runs every op on ``meta`` while recording it.

What it does differently from ``torch.fx.Tracer``:

- Proxies are ``MetaProxy``: each node stores its meta value in ``node.meta["val"]`` as it
  is created, so shape questions and shape-dependent control flow resolve while tracing.
- Every module is traced through (no ``call_module`` nodes); parameters and buffers become
  ``get_attr`` nodes, one per distinct tensor object (tied weights share one node).
- Device literals (``device=torch.device(...)``, ``.to("cuda")``) are replaced by a graph
  value, ``getattr(<first tensor input>, "device")``, and mapped to ``meta`` when executed,
  so the graph runs on whatever device its inputs are on and never names ``meta``.
- Factory functions (``torch.arange``, ``torch.zeros``, ...) called by the model are recorded
  as nodes rather than run eagerly: nothing real is allocated, and no constant is baked.
- Hugging Face mixture-of-experts modules run densely (every expert on every token, weighted
  by the routing weights, 0 for unselected experts): their sparse dispatch has data-dependent
  shapes (``moe.py``).
- The example inputs decide the placeholders (see ``ColoTracer.trace_model``); the output is
  flattened with pytree and restored by the generated code (``ModelOutput`` survives).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
import torch.utils._device
import torch.utils._pytree as pytree
from torch.fx.graph import CodeGen, _PyTreeCodeGen, _PyTreeInfo
from torch.fx.node import map_aggregate

from autopar.tracer import moe
from autopar.tracer.proxy import (
    CONCRETE_METHODS,
    DATA_FUNCTIONS,
    DATA_METHODS,
    MetaProxy,
    TraceError,
    data_dependent_error,
    format_frame,
    user_frame,
)

# torch factory functions recorded as graph nodes whenever the model calls them.
FACTORY_FUNCTIONS = ("arange", "zeros", "ones", "full", "empty", "tensor", "rand", "randn", "randint",
                     "linspace", "eye", "as_tensor", "scalar_tensor", "tril_indices", "triu_indices")
_META = torch.device("meta")


class _FlatOutputCodeGen(_PyTreeCodeGen):
    """Plain ``forward(self, <placeholders>)`` signature; the output is a flat tuple in the graph
    and ``pytree.tree_unflatten(..., self._out_spec)`` in the generated code."""

    def gen_fn_def(self, free_vars, maybe_return_annotation, *, expanded_def: bool = False) -> str:
        return CodeGen.gen_fn_def(self, free_vars, maybe_return_annotation, expanded_def=expanded_def)

    def process_inputs(self, *inputs: Any) -> Any:
        return inputs


def _fill_override_caches() -> None:
    import torch.overrides as overrides

    for name in ("get_ignored_functions", "get_testing_overrides", "get_default_nowrap_functions",
                 "_get_overridable_functions", "_get_tensor_methods"):
        fn = getattr(overrides, name, None)
        if fn is not None:
            fn()


def _is_device_literal(a) -> bool:
    return isinstance(a, torch.device)


class ColoTracer(fx.Tracer):
    """Symbolic tracer whose proxies carry meta tensors (see the module docstring)."""

    def __init__(self, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__(autowrap_functions=())
        # mixed precision: every trainable float parameter and float input is read through a cast to
        # this dtype, recorded while tracing so the model's own dtype-dependent code sees it
        self.compute_dtype = compute_dtype
        self._casts: dict[fx.Node, fx.Proxy] = {}
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # buffers are graph values: ``num_batches_tracked.add_(1)`` is recorded
        self._attr_meta: dict[str, torch.Tensor] = {}
        # id -> the name fx's getattr would find first (named_parameters(), then named_buffers())
        self._param_names: dict[int, str] = {}
        self._buffer_names: dict[int, str] = {}
        self._aliases: dict[int, tuple[str, ...]] = {}  # id(tensor) -> every qualified name
        self._meta_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inputs: list[tuple[str, Any, bool]] = []  # (name, value, positional)
        self._baked: dict[str, Any] = {}
        self._device_proxy: fx.Proxy | None = None
        self._out_spec: pytree.TreeSpec | None = None
        self._factories: set = set()
        self._running_meta = False  # meta kernels call torch factories: never record those

    # ----------------------------------------------------------------- fx hooks
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return MetaProxy(node, self)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return False  # every module is traced through

    def call_module(self, m, forward, args, kwargs):
        dense = moe.dense_forward(m)  # sparse expert dispatch cannot be traced: run it densely (moe.py)
        if dense is not None:
            return dense(*args, **kwargs)
        if self.submodule_paths is not None and m in self.submodule_paths:
            return super().call_module(m, forward, args, kwargs)
        return forward(*args, **kwargs)  # a module made at run time: not in the root's tree

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        """Record the node, then run it on meta and store the result in ``meta["val"]``.

        Shape queries (``size``, ``dim``, ...) return concrete values and record nothing;
        data reads (``item``, ``tolist``, ``torch.equal``) raise ``TraceError``.
        """
        if kind == "call_method" and target in CONCRETE_METHODS:
            return self._run_meta(kind, target, args, kwargs, None)
        if (kind == "call_method" and target in DATA_METHODS) or (kind == "call_function" and target in DATA_FUNCTIONS):
            node = next((a.node for a in args if isinstance(a, fx.Proxy)), None)
            raise data_dependent_error(node, f"`{getattr(target, '__name__', target)}`")
        if kind in ("call_function", "call_method"):
            args, kwargs = self._replace_devices(target, args, kwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr)
        node = proxy.node
        if kind == "get_attr":
            node.meta["val"] = self._meta_of_attr(target)
            t = self._attr_meta.get(target)
            if isinstance(t, torch.nn.Parameter):
                node.meta["param"] = target
                node.meta["param_aliases"] = self._aliases[id(t)]
        elif kind in ("call_function", "call_method"):
            node.meta["val"] = self._run_meta(kind, target, args, kwargs, node)
        return proxy

    def getattr(self, attr: str, attr_val, parameter_proxy_cache):
        out = self._attr_proxy(attr_val, parameter_proxy_cache)
        if (self.compute_dtype is not None and isinstance(out, fx.Proxy) and out.node.op == "get_attr"
                and isinstance(attr_val, torch.nn.Parameter) and attr_val.requires_grad
                and attr_val.is_floating_point() and attr_val.dtype != self.compute_dtype):
            if out.node not in self._casts:
                self._casts[out.node] = self.create_proxy("call_method", "to", (out, self.compute_dtype), {})
            return self._casts[out.node]
        return out

    def _attr_proxy(self, attr_val, parameter_proxy_cache):
        """fx's ``Tracer.getattr`` without its scan: fx searches every parameter (then buffer) of the root
        for the one read, at every read (an 80-layer model: most of the trace's own time); the names
        are looked up by identity instead, the same first name fx finds."""
        name = None
        if isinstance(attr_val, torch.nn.Parameter):
            name = self._param_names.get(id(attr_val))
        if name is None and self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = self._buffer_names.get(id(attr_val))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        """Placeholders for the example inputs (tensors and plain values alike, in order);
        non-tensor values and ``concrete_args`` are baked into the trace."""
        pos, kw = [], dict(self._baked)
        for name, value, positional in self._inputs:
            is_tensor = isinstance(value, torch.Tensor)
            default = () if is_tensor or not self._may_default(name) else (value,)
            p = self.create_proxy("placeholder", name, default, {})
            p.node.meta["val"] = self._meta_tensor(value) if is_tensor else value
            arg = p if is_tensor else value
            if is_tensor and self.compute_dtype is not None and value.is_floating_point() \
                    and value.dtype != self.compute_dtype:
                arg = self.create_proxy("call_method", "to", (p, self.compute_dtype), {})
            if positional:
                pos.append(arg)
            else:
                kw[name] = arg
        root = self.root

        def run_model():
            out = root_fn(root, *pos, **kw)
            leaves, self._out_spec = pytree.tree_flatten(out)
            return tuple(leaves)

        return run_model, []

    # ------------------------------------------------------------------ entry
    def trace_model(self, model: torch.nn.Module, example_inputs, concrete_args=None) -> fx.Graph:
        """Trace ``model.forward`` called with ``example_inputs`` (dict of keyword inputs, tuple of
        positional inputs, or one tensor); returns the graph (placeholders named after inputs)."""
        sig = inspect.signature(type(model).forward)
        params = list(sig.parameters.values())[1:]  # drop self
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if isinstance(example_inputs, dict):
            tensors = [(k, v, False) for k, v in example_inputs.items() if isinstance(v, torch.Tensor)]
            others = [(k, v, False) for k, v in example_inputs.items() if not isinstance(v, torch.Tensor)]
            self._inputs = tensors + others  # called by keyword: tensors first, plain values with defaults
            given = set(example_inputs)
        else:
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            names += [f"input_{i}" for i in range(len(names), len(example_inputs))]
            self._inputs = [(n, v, True) for n, v in zip(names, example_inputs)]
            given = set(names[: len(example_inputs)])
        self._baked = dict(concrete_args or {})
        if "use_cache" in sig.parameters and "use_cache" not in given | set(self._baked):
            self._baked["use_cache"] = False  # HF models return cache objects otherwise
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self._attr_meta[name] = t
            self._aliases[id(t)] = (*self._aliases.get(id(t), ()), name)
        self._param_names = {id(t): name for name, t in model.named_parameters()}
        self._buffer_names = {id(t): name for name, t in model.named_buffers()}
        # torch caches tables of functions on first use (torch.device("meta") as a context: its factory
        # functions; torch.overrides: the ignored / overridable ones): fill every cache with the real
        # functions before they are patched, else the rest of the process sees the patched ones (which
        # also hold this tracer, and through it the model's parameters).
        torch.utils._device._device_constructors()
        _fill_override_caches()
        factories = {n: getattr(torch, n) for n in FACTORY_FUNCTIONS if hasattr(torch, n)}
        self._factories = set(factories.values())
        try:
            for n, fn in factories.items():
                setattr(torch, n, self._wrap_factory(fn))
            graph = self.trace(model)
        finally:
            for n, fn in factories.items():
                setattr(torch, n, fn)
        graph._codegen = _FlatOutputCodeGen(_PyTreeInfo([n for n, _, _ in self._inputs], None, self._out_spec))
        return graph

    # ---------------------------------------------------------------- helpers
    def _may_default(self, name: str) -> bool:
        """A plain-value placeholder gets its value as default if every later input can default."""
        names = [n for n, _, _ in self._inputs]
        later = self._inputs[names.index(name):]
        return all(not isinstance(v, torch.Tensor) for _, v, _ in later)

    def _wrap_factory(self, fn):
        tracer = self

        def factory(*args, **kwargs):
            if not tracer._running_meta:  # a node even without traced args: no real tensor at trace time
                return tracer.create_proxy("call_function", fn, args, kwargs, name=fn.__name__)
            return fn(*args, **kwargs)

        factory.__wrapped__ = fn
        return factory

    def _input_device(self) -> fx.Proxy | None:
        """``getattr(<first tensor placeholder>, "device")``: the device the graph runs on."""
        if self._device_proxy is None:
            for node in self.graph.nodes:
                if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
                    self._device_proxy = self.create_proxy("call_function", getattr, (self.proxy(node), "device"), {})
                    break
        return self._device_proxy

    def _replace_devices(self, target, args, kwargs):
        """Replace device literals in an op's arguments by the inputs' device (a graph value)."""
        def fix(a):
            if _is_device_literal(a) or (is_to and isinstance(a, str) and _parses_as_device(a)):
                dev = self._input_device()
                return dev if dev is not None else a
            return a

        is_to = target in ("to", "cuda", "cpu")
        has_device = any(_is_device_literal(a) for a in pytree.tree_leaves((args, kwargs))) or (
            isinstance(kwargs.get("device"), str)) or (is_to and any(isinstance(a, str) for a in args))
        if not has_device:
            return args, kwargs
        args = tuple(fix(a) for a in args)
        kwargs = {k: (fix(v) if k != "device" or not isinstance(v, str) else (self._input_device() or v))
                  for k, v in kwargs.items()}
        return args, kwargs

    def _meta_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A meta tensor like ``t`` (no data is copied or allocated)."""
        if t.device.type == "meta":
            return t
        hit = self._meta_cache.get(id(t))
        if hit is None or hit[0] is not t:
            m = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            if t.requires_grad:
                m.requires_grad_(True)
            hit = self._meta_cache[id(t)] = (t, m)  # keeps t alive so its id is not reused
        return hit[1]

    def _meta_of_attr(self, qualname: str):
        t = self._attr_meta.get(qualname)
        if t is None:
            return None
        if isinstance(t, torch.nn.Parameter) or t.device.type != "meta":
            m = torch.empty_like(t, device="meta")
            return m.requires_grad_(t.requires_grad) if t.is_floating_point() or t.is_complex() else m
        return t

    def _run_meta(self, kind, target, args, kwargs, node):
        """Execute one op on meta values; errors become ``TraceError`` with the source line."""
        def to_meta(a):
            if isinstance(a, fx.Proxy):
                return a.node.meta.get("val")
            if isinstance(a, torch.Tensor):
                return self._meta_tensor(a)
            if isinstance(a, torch.device):
                return _META
            return a

        margs = map_aggregate(args, to_meta)
        mkwargs = map_aggregate(kwargs, to_meta)
        if ("device" in mkwargs and mkwargs["device"] is not None) or target in self._factories:
            mkwargs = {**mkwargs, "device": _META}
        self._running_meta = True
        try:
            if kind == "call_function":
                if target is getattr and isinstance(margs[0], torch.Tensor) and margs[1] == "device":
                    return _META
                return target(*margs, **mkwargs)
            self_val, rest = margs[0], margs[1:]
            if target in ("to", "cuda", "cpu"):
                rest = tuple(_META if isinstance(a, str) and _parses_as_device(a) else a for a in rest)
                if target != "to":
                    return self_val
            return getattr(self_val, target)(*rest, **mkwargs)
        except TraceError:
            raise
        except RuntimeError as e:
            if target not in ("view", torch.Tensor.view) or "view size is not compatible" not in str(e):
                raise self._meta_error(e, target, node) from e
            # Meta kernels keep an input's strides where the CPU and CUDA kernels return a contiguous
            # result (batch_norm of a transposed input: fuzz seed 5038), so a view the model runs can fail
            # on meta for strides alone: the shape is reshape's, and the runtime reads real tensors.
            return margs[0].reshape(*margs[1:], **mkwargs)
        except Exception as e:  # noqa: BLE001 - re-raised with the node and the model's source line
            raise self._meta_error(e, target, node) from e
        finally:
            self._running_meta = False

    @staticmethod
    def _meta_error(e: Exception, target, node) -> Exception:
        """``e``, raised running ``target`` on meta values, as the error to raise: the node and the source line."""
        what = f"%{node.name} = {getattr(target, '__name__', target)}" if node is not None else str(target)
        if "data-dependent" in str(e) or "meta tensors" in str(e) or "item()" in str(e):
            return data_dependent_error(node, f"`{getattr(target, '__name__', target)}`")
        return TraceError(
            f"while tracing {what} at {format_frame(user_frame())}: running the op on meta tensors failed: "
            f"{type(e).__name__}: {e}\n  What to do: check the shapes/dtypes of the example inputs; if the op "
            f"needs tensor values, pass the value through `concrete_args`."
        )


def _parses_as_device(s: str) -> bool:
    try:
        torch.device(s)
        return True
    except (RuntimeError, TypeError):
        return False
