"""Which of a model's outputs the traced graph returns (``PlanOptions.outputs``), chosen before profiling.

    outputs="all"              every output, as the model returns them (the default)
    outputs="loss"             only the loss (a ModelOutput or dict with a "loss" field; a model that
                               returns one tensor returns it as it is)
    outputs=("loss", "logits") a named subset of a ModelOutput or dict
    outputs="local"            every output, each as this rank's shard (runtime: ``ShardedOutput``)

The graph's output node keeps only the selected leaves, and the ops only the dropped ones needed are
removed, so the planner never prices gathering what nobody reads (GPT-2 trained with labels no
longer gathers its logits). The module then returns the same type with only those fields set
(``out.loss`` works; ``out.logits`` is None).
"""
from __future__ import annotations

import torch.fx as fx
import torch.utils._pytree as pytree

from autopar.errors import AutoparError


def select_outputs(gm: fx.GraphModule, outputs) -> fx.GraphModule:
    """Keep the outputs ``outputs`` names ("loss" or a tuple of field names) in ``gm``, in place."""
    if outputs in ("all", "local", None):
        return gm
    names = ("loss",) if outputs == "loss" else tuple(outputs)
    codegen = gm.graph._codegen
    spec: pytree.TreeSpec = codegen.pytree_info.out_spec
    out = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = list(out.args[0])
    if spec is None or spec.is_leaf():
        if outputs == "loss":
            return gm  # a model that returns its loss alone
        raise AutoparError(f"outputs={outputs!r} names fields, but the model returns a single value; "
                           f"pass outputs='all'")
    keys = _keys(spec)
    if keys is None or not all(child.is_leaf() for child in spec.children()):
        raise AutoparError(f"outputs={outputs!r} needs a model that returns a ModelOutput or a dict of tensors; this "
                           f"one returns {spec.type.__name__}: pass outputs='all' or 'local'")
    missing = [n for n in names if n not in keys]
    if missing:
        raise AutoparError(f"outputs={outputs!r}: the model's output has no field {', '.join(map(repr, missing))}; "
                           f"its fields are {', '.join(map(repr, keys))}")
    kept = [leaves[keys.index(n)] for n in names]
    example = spec.type(**dict.fromkeys(names, 0)) if spec.type is not dict else dict.fromkeys(names, 0)
    new_spec = pytree.tree_flatten(example)[1]
    out.args = (tuple(kept),)
    codegen.pytree_info = codegen.pytree_info._replace(out_spec=new_spec)
    from autopar.tracer.canonical import _remove_dead_nodes

    _remove_dead_nodes(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return gm


def _keys(spec: pytree.TreeSpec):
    """The field names of a ModelOutput or dict's TreeSpec, or None for other containers."""
    ctx = spec.context
    if spec.type is dict:
        return list(ctx)
    if isinstance(ctx, (list, tuple)) and all(isinstance(k, str) for k in ctx):
        return list(ctx)
    if isinstance(ctx, tuple) and len(ctx) == 2 and isinstance(ctx[1], (list, tuple)):
        return list(ctx[1])
    return None
