"""Wrap recomputed regions of the per-rank graph in non-reentrant ``torch.utils.checkpoint``.

A region is a set of traced node names (``CheckpointPlan.regions``). Its per-rank nodes (those
whose ``meta["traced"]`` is in the set, resharding included) move into a sub-GraphModule
``self.ckpt_<i>``; the parent graph calls it as

    ckpt_0 = self.ckpt_0
    checkpoint = torch.utils.checkpoint.checkpoint(ckpt_0, x, weight, ...,
                                                   use_reentrant=False, preserve_rng_state=False)

so forward keeps only the region's inputs, and backward re-runs the region (its collectives
included: every rank recomputes the same regions in the same order). The RNG state is stashed
(``preserve_rng_state=True``, about 5 KB per region on CPU) only for a region with a random op
(a dropout that drops, ``rand``, ...): recomputing any other region draws nothing.
"""
from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.utils.checkpoint

from autopar.runtime.rng import draws_random

REGION_CLASS = "CheckpointRegion"  # class name of the region submodules


def wrap_regions(gm: fx.GraphModule, regions) -> list[str]:
    """Move each region into a checkpointed submodule of ``gm``; returns the submodule names."""
    names = []
    for i, region in enumerate(regions):
        members = set(region)
        nodes = [n for n in gm.graph.nodes if n.meta.get("traced") in members and n.op not in ("placeholder",
                                                                                               "get_attr", "output")]
        if nodes:
            names.append(_extract(gm, nodes, f"ckpt_{i}"))
    gm.graph.lint()
    gm.recompile()
    return names


def wrap_traced(gm: fx.GraphModule, regions) -> fx.GraphModule:
    """A copy of a traced single-device ``gm`` with ``regions`` wrapped (its nodes are their own
    traced names): runs a CheckpointPlan without codegen, for benchmarks and tests."""
    out = copy.deepcopy(gm)
    for node in out.graph.nodes:
        node.meta["traced"] = node.name
    wrap_regions(out, regions)
    return out


def _extract(gm: fx.GraphModule, nodes: list[fx.Node], name: str) -> str:
    inside = set(nodes)
    inputs: list[fx.Node] = []
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in inside and arg not in inputs:
                inputs.append(arg)
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]

    sub = fx.Graph()
    env = {arg: sub.placeholder(arg.name) for arg in inputs}
    for node in nodes:
        env[node] = sub.node_copy(node, lambda a: env[a])
    sub.output(tuple(env[o] for o in outputs))
    modules = {n.target: gm.get_submodule(n.target) for n in nodes if n.op == "call_module"}
    gm.add_submodule(name, fx.GraphModule(modules, sub, class_name=REGION_CLASS))

    with gm.graph.inserting_after(nodes[-1]):
        region = gm.graph.get_attr(name)
    with gm.graph.inserting_after(region):
        call = gm.graph.call_function(torch.utils.checkpoint.checkpoint, (region, *inputs),
                                      {"use_reentrant": False, "preserve_rng_state": _draws_random(nodes)})
    last = call
    for k, out in enumerate(outputs):
        with gm.graph.inserting_after(last):
            last = gm.graph.call_function(operator.getitem, (call, k))
        last.meta = dict(out.meta)
        out.replace_all_uses_with(last, delete_user_cb=lambda user: user not in inside)
    for node in reversed(nodes):
        gm.graph.erase_node(node)
    return name


def _draws_random(nodes: list[fx.Node]) -> bool:
    """Whether recomputing ``nodes`` draws random numbers (then the RNG state must be replayed)."""
    return any(draws_random(node) for node in nodes)


def region_modules(gm: torch.nn.Module) -> list[torch.nn.Module]:
    """The checkpoint region submodules ``wrap_regions`` added to ``gm``."""
    return [m for m in gm.modules() if type(m).__name__ == REGION_CLASS]
