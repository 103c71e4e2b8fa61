"""What each node keeps for backward on one device under the chosen strategies: stage 2's saved bytes.

The tracer's saved set (``meta["storage"]``, ``autopar.tracer.saved``) names the storages each
node saves, on global tensors. On one device of a sharding plan a saved storage is

- an input the plan reshards for this node (its input spec differs from its producer's output
  spec): codegen's copy, one per (producer, spec), of ``local_bytes(input, wanted spec)``; for a
  parameter too: the parameter is held anyway, its gathered copy is not;
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

import torch.fx as fx

from autopar.solver.cost_model import local_bytes
from autopar.tracer.meta import is_multi

Key = tuple  # ("root", node name, index) or ("copy", node name, spec) or ("own", node name)


def saved_storages(gm: fx.GraphModule, mesh_shape) -> dict[fx.Node, dict[Key, float]]:
    """Per op node: {storage key: local bytes} of everything it saves for backward (see the module docstring)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    out: dict[fx.Node, dict[Key, float]] = {}
    for node in gm.graph.nodes:
        storage, strategy, profile = (node.meta.get(k) for k in ("storage", "strategy", "profile"))
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
            produced = arg.meta["strategy"].output if arg.meta.get("strategy") is not None else None
            if wanted is not None and produced is not None and wanted != produced:
                keys[("copy", arg.name, wanted)] = local_bytes(arg.meta["tensor"], wanted, mesh_shape)
            else:
                keys.update(_root_keys(by_name, roots, mesh_shape))
        keys.update(_root_keys(by_name, left, mesh_shape))
        out[node] = keys
    return out


def root_key(root) -> Key:
    return ("root", *root)


def _root_keys(by_name, roots, mesh_shape) -> dict[Key, float]:
    out = {}
    for name, i in roots:
        node = by_name[name]
        if node.op != "get_attr":
            out[root_key((name, i))] = root_bytes(node, i, mesh_shape)
    return out


def root_bytes(node: fx.Node, i, mesh_shape) -> float:
    """Local bytes of output ``i`` (None: the only one) of ``node`` in its chosen spec."""
    tm = node.meta["tensor"]
    tm = tm[i] if i is not None and is_multi(tm) else tm
    strategy = node.meta.get("strategy")
    return local_bytes(tm, strategy.output, mesh_shape) if strategy is not None else float(tm.nbytes)
