"""Stage 1 (the ILP's liveness, solver/memory.py) and stage 2 (checkpoint_saved.py, what the checkpoint
planner and the Timeline count) price every saved tensor's bytes the same way.

For zoo models on a 2x2 mesh and random plans (any choice of one strategy per node is a plan to
account for: no solve needed, and random choices reshard far more than solved ones do), each node's
stage-1 saved bytes equal the stage-2 bytes of the storages it is the first to save, node by node,
except where the two accounts are documented to differ (checkpoint_saved.py's docstring):

- a later saver of an activation that reads it in another spec than the first saver did (another
  resharded copy, or the storage itself where the first saver read a copy): stage 2 counts what it
  reads (a key of its own), stage 1 does not see it (the ILP counts a storage for its first saver);
- a parameter two ops save in the same resharded spec: one copy in stage 2, one per saver in stage 1;
- a storage first saved through views, resharded on the way from its root: stage 1 counts every copy
  on the way and keeps the root's term (it is priced on the root's own strategies), stage 2 the copy
  nearest the saver alone, so stage 1 is above by those bytes there, never below.
"""
from __future__ import annotations

import random

import pytest

import autopar
from autopar import zoo
from autopar.solver.build import build_strategies
from autopar.solver.checkpoint_saved import saved_storages
from autopar.solver.memory import MemoryModel, _view_hops
from autopar.tracer import trace

MODELS = ("gpt2", "llama", "bert", "t5", "deberta_v2", "vit", "mixtral", "timm:resnet50")
PLANS = 6  # random plans per model


def _accounts(mm: MemoryModel, gm, mesh, choice):
    """Per node name: (stage 1 bytes, stage 2 bytes), with the documented differences taken out."""
    nodes = mm.sg.nodes
    index = {v: k for k, v in enumerate(nodes)}
    strategy = {v: v.meta["strategies"][choice[k]] for k, v in enumerate(nodes)}
    saves = saved_storages(gm, mesh, strategy.get)
    by_name = {n.name: n for n in gm.graph.nodes}
    kept: dict[int, list[tuple[int, float]]] = {}
    for e, t, mat in mm.kept_copies:
        kept.setdefault(t, []).append((e, mm._edge_value(e, t, mat, choice)))
    edges_into = {(edge.src, edge.dst): e for e, edge in enumerate(mm.sg.edges)}
    into: dict = {}
    for e, edge in enumerate(mm.sg.edges):
        into.setdefault(edge.dst, []).append(e)

    def forbidden(e: int) -> bool:
        edge = mm.sg.edges[e]
        return edge.forbidden is not None and bool(edge.forbidden[edge.src_group[choice[index[edge.src]]],
                                                                  edge.dst_group[choice[index[edge.dst]]]])

    seen: set = set()
    state_copies: set = set()
    out = {}
    for k, v in enumerate(nodes):
        skip = any(forbidden(e) for e in into.get(v, ()))
        stage1 = mm.saved[k][choice[k]] + sum(value for _e, value in kept.get(k, ()))
        stage1 += sum(vec[choice[r]] for r, vec in mm.saved_views[k])
        copied = {e: value for e, value in kept.get(k, ()) if value > 0}
        ways = [(nodes[r].name, vec[choice[r]]) for r, vec in mm.saved_views[k]]
        ways += [(name, 0.0) for name, _i in v.meta["storage"].saves if by_name[name].op == "get_attr"] \
            if "storage" in v.meta else []
        for root, term in dict(ways).items():
            hops = _view_hops(v, root, edges_into)
            if any(forbidden(e) for e in hops):
                skip = True  # not a plan the ILP can choose: codegen never reshards a tuple
            resharded = [e for e in hops if e in copied]
            if resharded:  # stage 1 keeps the root's term and counts every copy on the way; stage 2 the nearest
                stage1 -= term + sum(copied[e] for e in resharded[1:])
        first = set(v.meta["storage"].first) if "storage" in v.meta else set()
        stage2 = 0.0
        for key, size in saves.get(v, {}).items():
            if key in seen and key not in state_copies:
                continue
            seen.add(key)
            if key[0] == "copy":
                src = by_name[key[1]]
                roots = set(src.meta["storage"].roots) if "storage" in src.meta else set()
                of_state = any(r is not None and by_name[r[0]].op == "get_attr" for r in roots)  # a parameter's
                if src.op != "get_attr" and not of_state and not roots & first:
                    continue  # a later saver's own copy: stage 1 does not see it
                if of_state and key in state_copies:
                    stage2 += size  # a parameter's copy another op saved first: stage 1 counts it again
                    continue
                if of_state:
                    state_copies.add(key)
            elif key[0] == "root" and tuple(key[1:]) not in first:
                continue  # the storage itself, read by a later saver where the first saver read a copy
            stage2 += size
        if not skip:
            out[v.name] = (float(stage1), float(stage2))
        assert index[v] == k
    return out


@pytest.mark.parametrize("name", MODELS)
def test_stage1_and_stage2_price_every_saved_tensor_alike(name):
    model, inputs = zoo.build(name, "tiny", device="meta")
    gm = trace(model, inputs)
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    sg = build_strategies(gm, cluster)
    mm = MemoryModel(sg)
    rng = random.Random(name)
    sizes = [len(v.meta["strategies"]) for v in sg.nodes]
    plans = [[0] * len(sizes)] + [[rng.randrange(n) for n in sizes] for _ in range(PLANS - 1)]
    for p, choice in enumerate(plans):
        accounts = _accounts(mm, gm, cluster.mesh_shape, choice)
        bad = {n: ab for n, ab in accounts.items() if abs(ab[0] - ab[1]) > 1e-6 * max(ab[1], 1.0)}
        assert not bad, f"{name}, plan {p}: stage 1 vs stage 2 saved bytes differ at {sorted(bad.items())[:6]}"
        assert sum(a for a, _ in accounts.values()) > 0
