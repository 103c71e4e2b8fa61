"""What each node keeps for backward on one device under the chosen strategies: stage 2's saved bytes.

The tracer's saved set (``meta["storage"]``, ``autopar.tracer.saved``) names the storages each
node saves, on global tensors. On one device of a sharding plan a saved storage is

- an input the plan reshards for this node (its input spec differs from its producer's output
  spec), or for a view between it and the storage's root: codegen's copy, one per (producer,
  spec), of ``local_bytes(producer, wanted spec)``; for a parameter too: the parameter is held
  anyway, its gathered copy is not. A resharding that only splits the leading dim further
  slices the local shard: a view, so the storage is still the producer's;
- otherwise the storage itself, ``local_bytes(root, the root's output spec)``; never a parameter
  or buffer;

plus the node's private bytes (norm statistics, masks, attention's logsumexp) scaled as the
cost model scales its saved bytes (by the local share of its activation inputs). Storages are
keys, so the chain counts each once per stage or region. A node the tracer could not replay
keeps its strategy's memory under a key of its own.

The ILP (``memory.py``) counts the same storages on global tensors, once for their first saver,
scaled to each saver's local shard, plus the saved copies of resharded parameters; it does not
see that two savers of one activation may save two different resharded copies of it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx

from autopar.solver.cost_model import local_bytes
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
        if storage.private:  # scaled like the node's saved bytes (cost_model: by its activation inputs' shard)
            share = strategy.memory / profile.saved_bytes if profile.saved_bytes else 1.0
            keys[("own", node.name)] = storage.private * share
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
                keys.update(_root_keys(by_name, roots, mesh_shape, strategy_of))
        keys.update(_root_keys(by_name, left, mesh_shape, strategy_of))
        out[node] = keys
    return out


def _resharded_copy(arg: fx.Node, wanted, mesh_shape, strategy_of: StrategyOf) -> tuple[Key, float] | None:
    """The copy a consumer wanting ``arg`` as ``wanted`` reads: codegen's resharding nearest to the
    consumer on the way from ``arg`` back through its views to the storage's root (key, local bytes),
    or None when nothing on the way is resharded (the consumer reads the root's own storage)."""
    node, spec = arg, wanted
    while True:
        strategy = strategy_of(node)
        produced = strategy.output if strategy is not None else None
        if spec is not None and produced is not None and spec != produced \
                and not _split_is_view(produced, spec, node.meta["tensor"], mesh_shape):
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
        node, spec = parent, strategy.inputs[k]


def root_key(root) -> Key:
    return ("root", *root)


def _root_keys(by_name, roots, mesh_shape, strategy_of: StrategyOf) -> dict[Key, float]:
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


def _split_is_view(produced, wanted, tm, mesh_shape) -> bool:
    """Whether ``wanted`` only splits further what ``produced`` holds (S0R -> S01R, R -> S1) along dims
    before which the local shard has only dims of size 1: codegen's chunk is then a contiguous slice
    of the local shard, a view of its storage, not a copy (``collectives.chunk``)."""
    if (is_multi(tm) or produced.ndim != wanted.ndim or produced.partial or wanted.partial
            or not produced.fits(tm.shape, mesh_shape)):
        return False
    local = produced.local_shape(tm.shape, mesh_shape)
    return all(w[:len(p)] == p and (w == p or all(n == 1 for n in local[:d]))
               for d, (p, w) in enumerate(zip(produced.dims, wanted.dims)))
