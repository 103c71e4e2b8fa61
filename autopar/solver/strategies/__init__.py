"""The op-strategy registry: ``strategies_for(node, cluster) -> list[Strategy]``.

Each op family registers single-mesh-axis rules (``base.register``) in its own module;
``base.expand`` takes them over every mesh axis and ``cost_model`` prices each result.
An op without a rule gets the all-replicate strategy and ``node.meta["fallback"] = True``,
which the plan's report lists.
"""
from __future__ import annotations

import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.errors import NodeError
from autopar.solver import cost_model
from autopar.solver.strategies import (  # noqa: F401  (importing registers the rules)
    attention,
    batchnorm,
    conv,
    embedding,
    indexing,
    loss,
    masks,
    matmul,
    norm,
    placeholder,
    pointwise,
    pool,
    reduction,
    repeat,
    shape,
)
from autopar.solver.strategies.base import CHECKS, RULES, AxisOption, expand, is_tuple_meta, tmeta
from autopar.solver.strategy import Strategy
from autopar.spec import ShardingSpec

SCALAR = ShardingSpec(())  # the "output spec" of nodes whose output is not a tensor


def op_key(node: fx.Node) -> str:
    return node.meta.get("op") or {"placeholder": "placeholder", "output": "output", "get_attr": "param"}.get(
        node.op, str(getattr(node.target, "__name__", node.target)))


def strategies_for(node: fx.Node, cluster: ClusterInfo, pricing=None) -> list[Strategy]:
    """Every strategy of ``node`` on ``cluster``'s mesh, priced (``cost_model.Pricing``, default: AdamW and
    25 MiB gradient chunks), all-replicate first, no duplicates."""
    inputs = node.all_input_nodes
    if node.op == "output":  # everything leaves whole (R for each tensor), or, with local outputs, as it is
        local = pricing is not None and pricing.local_outputs
        specs = tuple(None if local and _ndim(n) else _replicated(n) for n in inputs)
        return [Strategy(SCALAR, specs)]
    if tmeta(node) is None:  # an int, a dtype, ...: reads no tensor element
        return [Strategy(SCALAR, (None,) * len(inputs))]
    key = op_key(node)
    rule = RULES.get(key)
    node.meta.pop("fallback", None)
    if rule is None:
        node.meta["fallback"] = True
        options: list[AxisOption] = []
    else:
        try:
            options = rule(node)
        except Exception as exc:  # a rule met arguments it does not understand
            raise NodeError(node, f"the '{key}' sharding rule failed: {exc!r}",
                            hint="report this with the model; the op's arguments may not be in canonical form") from exc
    strategies = []
    check = CHECKS.get(key)
    for specs in expand(node, options, cluster.mesh_shape):
        if check is not None and not check(node, specs, cluster.mesh_shape):
            continue
        strategies.append(cost_model.price(node, specs[0], specs[1:], cluster, pricing))
    return strategies


def _signature(node: fx.Node):
    """What a node's strategies depend on: its op, its arguments with every input node replaced by
    (position, kind, op, tensor meta), its own tensor meta and profile. Identical layers of a model
    have equal signatures, so ``build_strategies`` enumerates and prices each distinct one once.
    None when some argument cannot be compared (then the node is not memoised)."""
    position = {n: i for i, n in enumerate(node.all_input_nodes)}

    def arg(a):
        if isinstance(a, fx.Node):
            return ("node", position[a], a.op, a.meta.get("op"), a.meta.get("tensor"))
        if isinstance(a, (list, tuple)):
            return (type(a).__name__, *map(arg, a))
        if isinstance(a, dict):
            return ("dict", *((k, arg(v)) for k, v in a.items()))
        if isinstance(a, slice):
            return ("slice", arg(a.start), arg(a.stop), arg(a.step))
        return a

    if node.op == "get_attr":  # a parameter or buffer: priced by its kind and tensor alone, not its name
        return (node.op, node.meta.get("op"), node.meta.get("tensor"))
    key = (node.op, node.target, node.meta.get("op"), node.meta.get("tensor"), node.meta.get("profile"),
           arg(node.args), arg(node.kwargs))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def memoised_strategies(node: fx.Node, cluster: ClusterInfo, memo: dict,
                        pricing=None) -> list[Strategy]:
    """``strategies_for(node, cluster, pricing)``, computed once per distinct ``_signature`` in ``memo``."""
    key = _signature(node) if node.op not in ("placeholder", "output") else None
    if key is None:
        return strategies_for(node, cluster, pricing)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (strategies_for(node, cluster, pricing), node.meta.get("fallback", False))
    node.meta.pop("fallback", None)
    if hit[1]:
        node.meta["fallback"] = True
    return list(hit[0])


def _ndim(n: fx.Node) -> int:
    """Dims of a node's tensor (0 for scalars and non-tensors): local outputs keep scalars whole."""
    tm = tmeta(n)
    return len(tm.shape) if tm is not None and not is_tuple_meta(tm) else 0


def _replicated(n: fx.Node) -> ShardingSpec | None:
    tm = tmeta(n)
    if is_tuple_meta(tm):
        tm = next((t for t in tm if t is not None), None)
    return ShardingSpec.replicate(len(tm.shape)) if tm is not None else None


__all__ = ["strategies_for", "memoised_strategies", "RULES", "op_key"]
