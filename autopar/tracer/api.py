"""``trace``: model + example inputs -> an annotated, canonical ``fx.GraphModule``.

The recipe: record the model with ``ColoTracer`` (every op run on meta), wrap the graph in
a ``GraphModule`` that holds the model's own parameters, normalise every op to its
canonical form (``canonical.canonicalize``), then annotate each node with ``TensorMeta``,
``NodeProfile`` and its source line (``profile.profile_graph``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from autopar.tracer.canonical import canonicalize
from autopar.tracer.colo_tracer import ColoTracer
from autopar.tracer.fused import split_fused_projections
from autopar.tracer.outputs import select_outputs
from autopar.tracer.profile import profile_graph


def trace(
    model: torch.nn.Module, example_inputs: Any, *, concrete_args: dict[str, Any] | None = None, outputs="all",
    compute_dtype: torch.dtype | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` whose nodes all carry the ``autopar.tracer.meta`` keys.

    ``example_inputs``: a dict of keyword inputs (``{"input_ids": ids, "labels": ids}``), a tuple
    of positional inputs, or one tensor. Tensors (real or meta) become placeholders named after
    the inputs; plain values (bools, None, ints) and ``concrete_args`` are baked into the trace.
    ``use_cache=False`` is passed when ``forward`` takes ``use_cache`` and no value was given.
    The model may live on ``meta``; no weight is allocated. Calling the result with the same
    inputs returns what the model returns (for Hugging Face models, the same ``ModelOutput``), or the
    fields ``outputs`` selects (``autopar.tracer.outputs``: "all", "loss", "local" or names).
    ``compute_dtype`` (mixed precision): every trainable float parameter and float input is read through
    a cast to it, so the graph computes in it while the parameters stay as they are (the master copy);
    the result, run on one device, is the single-device model under that policy.
    """
    tracer = ColoTracer(compute_dtype)
    graph = tracer.trace_model(model, example_inputs, concrete_args)
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    for node in gm.graph.nodes:  # constants fx embedded itself (``_tensor_constant0``)
        if node.op == "get_attr" and "val" not in node.meta:
            t = _fetch_attr(gm, node.target)
            node.meta["val"] = tracer._meta_tensor(t) if isinstance(t, torch.Tensor) else t
        if node.op == "output":  # the flat tuple of output values
            node.meta["val"] = fx.node.map_arg(node.args[0], lambda n: n.meta.get("val"))
    canonicalize(gm)
    select_outputs(gm, outputs)  # before profiling: what nobody reads is not traced at all
    _keep_unread_state(tracer, model, gm)  # after every dead-code pass: state only dead code read stays
    split_fused_projections(gm)  # q, k, v of one fused matmul: one matmul each (fused.py)
    profile_graph(gm)
    gm.recompile()
    return gm


def _keep_unread_state(tracer: ColoTracer, model: torch.nn.Module, gm: fx.GraphModule) -> None:
    """A parameter or buffer the forward never reads (DINOv2's ``mask_token`` in classification), or that
    only code whose result nobody uses read, is still the model's: it gets a ``get_attr`` node with no
    users (``meta["unread"]``, never removed as dead code), so it is planned, stored, saved and loaded
    like every other parameter and buffer."""
    graph, attrs = gm.graph, tracer._attr_meta
    read = {id(attrs[n.target]) for n in graph.nodes if n.op == "get_attr" and n.target in attrs}
    last = None
    for node in graph.nodes:
        if node.op == "placeholder":
            last = node
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in read:
            continue
        read.add(id(t))
        owner, _, leaf = name.rpartition(".")
        holder = gm
        for atom in owner.split(".") if owner else ():  # the GraphModule holds only what its graph read
            if not hasattr(holder, atom):
                holder.add_module(atom, torch.nn.Module())
            holder = getattr(holder, atom)
        if isinstance(t, torch.nn.Parameter) and not hasattr(holder, leaf):
            holder.register_parameter(leaf, t)
        elif not hasattr(holder, leaf):
            holder.register_buffer(leaf, t)
        with graph.inserting_after(last) if last is not None else graph.inserting_before(None):
            node = graph.get_attr(name)
        node.meta.update(val=tracer._meta_of_attr(name), unread=True)
        if isinstance(t, torch.nn.Parameter):
            node.meta.update(param=name, param_aliases=tracer._aliases[id(t)])
        node.meta["op"] = "param" if "param" in node.meta else "buffer"
        last = node


def _fetch_attr(mod: torch.nn.Module, qualname: str):
    for atom in qualname.split("."):
        mod = getattr(mod, atom)
    return mod
