"""What each node keeps for backward on one device under the chosen strategies: stage 2's saved bytes.

The tracer's saved set (``meta["storage"]``, ``autopar.tracer.saved``) names the storages each
node saves, on global tensors. On one device of a sharding plan a saved storage is

- an input the plan reshards for this node (its input spec differs from its producer's output
  spec), or for a view between it and the storage's root: codegen's copy, one per (producer,
  spec), of ``local_bytes(producer, wanted spec)`` (a resharding that only splits further is a
  copy too: shape_consistency clones a slice rather than keep the whole storage alive); for a
  parameter too: the parameter is held anyway, its gathered copy is not;
- otherwise the storage itself, ``local_bytes(root, the root's output spec)``; never a parameter
  or buffer;

plus the node's private bytes (norm statistics, masks, attention's logsumexp) x the local share of
its activation inputs (``cost_model.saved_share``). Storages are keys, so the chain counts each
once per stage or region. A node the tracer could not replay keeps its strategy's memory under a
key of its own.

The ILP (``memory.py``) prices every storage the same way for its first saver (``Strategy.memory``,
``cost_model.saved_local_bytes``, a storage reached through views on its root's strategies), plus
the copies on resharded edges of the way to what a node saves; it does not see that a later saver of
one activation may save another copy of it (a second key here), and where a view chain is resharded it
counts every copy on the way and keeps the root's term (here: the copy nearest the saver only), so it
is above this account there, never below. tests/solver/test_saved_accounts.py compares the two.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx

from autopar.solver.cost_model import local_bytes, saved_share
from autopar.solver.strategy import Strategy
from autopar.tracer.meta import is_multi

Key = tuple  # ("root", node name, index) or ("copy", node name, spec) or ("own", node name)
StrategyOf = Callable[[fx.Node], "Strategy | None"]  # the plan's chosen strategy of a traced node


def saved_storages(gm: fx.GraphModule, mesh_shape, strategy_of: StrategyOf) -> dict[fx.Node, dict[Key, float]]:
    """Per op node: {storage key: local bytes} of everything it saves for backward (see the module docstring)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    out: dict[fx.Node, dict[Key, float]] = {}
    for node in gm.graph.nodes:
        storage, profile = node.meta.get("storage"), node.meta.get("profile")
        strategy = strategy_of(node)
        if node.op in ("placeholder", "get_attr", "output") or strategy is None or profile is None:
            continue
        if storage is None or (not storage.saves and not storage.private):
            if profile.saved_bytes:  # not replayed: the rule-based figure, as the ILP has it
                out[node] = {("own", node.name): strategy.memory}
            continue
        keys: dict[Key, float] = {}
        if storage.private:  # scaled by its activation inputs' local share, as the cost model does
            keys[("own", node.name)] = storage.private * saved_share(node, strategy.output, strategy.inputs,
                                                                     mesh_shape)
        left = set(storage.saves)
        for arg, wanted in zip(node.all_input_nodes, strategy.inputs):
            roots = set(arg.meta["storage"].roots) & left if "storage" in arg.meta else set()
            if not roots:
                continue
            left -= roots
            copy = _resharded_copy(arg, wanted, mesh_shape, strategy_of)
            if copy is not None:
                keys[copy[0]] = copy[1]
            else:
                keys.update(root_keys(by_name, roots, mesh_shape, strategy_of))
        keys.update(root_keys(by_name, left, mesh_shape, strategy_of))
        out[node] = keys
    return out


def _resharded_copy(arg: fx.Node, wanted, mesh_shape, strategy_of: StrategyOf) -> tuple[Key, float] | None:
    """The copy a consumer wanting ``arg`` as ``wanted`` reads: codegen's resharding nearest to the
    consumer on the way from ``arg`` back through its views to the storage's root (key, local bytes),
    or None when nothing on the way is resharded (the consumer reads the root's own storage)."""
    node, spec, child = arg, wanted, None
    while True:
        strategy = strategy_of(node)
        produced = strategy.output if strategy is not None else None
        if spec is not None and produced is not None and spec != produced:
            if is_multi(node.meta["tensor"]) and child is not None:  # codegen reshards the element picked
                return ("copy", child.name, spec), local_bytes(child.meta["tensor"], spec, mesh_shape)
            return ("copy", node.name, spec), local_bytes(node.meta["tensor"], spec, mesh_shape)
        storage = node.meta.get("storage")
        root = storage.roots[0] if storage is not None and storage.roots else None
        if root is None or root[0] == node.name or strategy is None:
            return None
        # a view: its storage is its base's, laid out as the view's own strategy wanted that input
        k, parent = next(((k, a) for k, a in enumerate(node.all_input_nodes)
                          if "storage" in a.meta and root in a.meta["storage"].roots), (None, None))
        if parent is None:
            return None
        node, spec, child = parent, strategy.inputs[k], node


def root_key(root) -> Key:
    return ("root", *root)


def root_keys(by_name, roots, mesh_shape, strategy_of: StrategyOf) -> dict[Key, float]:
    """{key: local bytes} of the storages ``roots`` ((node name, output index) pairs) but parameters'."""
    out = {}
    for name, i in roots:
        node = by_name[name]
        if node.op != "get_attr":
            out[root_key((name, i))] = root_bytes(node, i, mesh_shape, strategy_of)
    return out


def root_bytes(node: fx.Node, i, mesh_shape, strategy_of: StrategyOf) -> float:
    """Local bytes of output ``i`` (None: the only one) of ``node`` in its chosen spec."""
    tm = node.meta["tensor"]
    tm = tm[i] if i is not None and is_multi(tm) else tm
    strategy = strategy_of(node)
    return local_bytes(tm, strategy.output, mesh_shape) if strategy is not None else float(tm.nbytes)
