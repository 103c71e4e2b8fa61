"""Stage 2: which activations recompute in backward, on the per-device costs of the sharding plan.

1. ``linearise`` cuts the traced graph into stages at the points where exactly one tensor that
   carries a gradient crosses (masks, ids and other tensors without gradient are free to cross:
   a checkpoint region takes them as extra inputs).
2. ``chain_of`` prices each stage from the chosen strategies (local shards): forward time
   (the forward share of the strategies' compute time), bytes saved for backward (the
   strategies' memory), bytes of its input, and its largest output plus gradient as transient.
   Short stages are merged so the chain has at most ``max_stages`` stages.
3. ``plan_checkpoints`` runs the exact chain DP (``checkpoint_dp``) for the activation budget
   and returns a CheckpointPlan: the recomputed regions as lists of traced node names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from autopar.solver.checkpoint_dp import Chain, Schedule, no_checkpoint, plan_chain
from autopar.solver.cost_model import local_bytes
from autopar.tracer.meta import is_multi, tensor_meta

_NOT_OPS = ("placeholder", "get_attr", "output")


def _carries_grad(node: fx.Node) -> bool:
    tm = node.meta.get("tensor")
    metas = tm if is_multi(tm) else (tm,)
    return any(t is not None and t.requires_grad for t in metas)


def linearise(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Op nodes in order, cut wherever a single gradient-carrying tensor is live across the cut."""
    ops = [n for n in gm.graph.nodes if n.op not in _NOT_OPS]
    position = {n: i for i, n in enumerate(ops)}
    end = len(ops)
    last_use = {n: max((position.get(u, end) for u in n.users), default=position[n]) for n in ops}
    stages: list[list[fx.Node]] = [[]]
    live: set[fx.Node] = set()
    for i, node in enumerate(ops):
        stages[-1].append(node)
        if _carries_grad(node):
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if len(live) == 1 and i + 1 < end:
            stages.append([])
    return [s for s in stages if s]


def _boundary(stage: list[fx.Node]) -> fx.Node | None:
    """The gradient-carrying tensor entering ``stage`` from before it (None for the first)."""
    inside = set(stage)
    for node in stage:
        for arg in node.all_input_nodes:
            if arg not in inside and arg.op not in ("get_attr",) and _carries_grad(arg):
                return arg
    return None


def _stage_costs(stage: list[fx.Node], mesh_shape) -> tuple[float, float, float, float]:
    forward = saved = transient = 0.0
    for node in stage:
        strategy = node.meta.get("strategy")
        if strategy is None:
            continue
        profile = node.meta.get("profile")
        total = (profile.fwd_flops + profile.bwd_flops) if profile else 0.0
        forward += strategy.compute_time * (profile.fwd_flops / total if total else 0.5)
        saved += strategy.memory
        if _carries_grad(node):  # the output and its gradient live while the node runs
            transient = max(transient, 2 * local_bytes(node.meta["tensor"], strategy.output, mesh_shape))
    entry = _boundary(stage)
    x = 0.0
    if entry is not None and entry.meta.get("strategy") is not None:
        x = local_bytes(tensor_meta(entry), entry.meta["strategy"].output, mesh_shape)
    return forward, saved, x, transient


def _merge(stages: list[list[fx.Node]], max_stages: int, weights: list[float]) -> list[list[fx.Node]]:
    """Adjacent stages joined greedily until there are at most ``max_stages`` of similar saved bytes."""
    if len(stages) <= max_stages:
        return stages
    target = sum(weights) / max_stages
    out: list[list[fx.Node]] = [[]]
    acc = 0.0
    for stage, w in zip(stages, weights):
        if out[-1] and acc + w > target and len(out) < max_stages:
            out.append([])
            acc = 0.0
        out[-1].extend(stage)
        acc += w
    return out


def chain_of(gm: fx.GraphModule, mesh_shape, max_stages: int = 48) -> tuple[list[list[fx.Node]], Chain]:
    """The stages of ``gm`` (nodes carry ``meta["strategy"]``) and their per-device chain costs."""
    stages = linearise(gm)
    weights = [_stage_costs(s, mesh_shape)[1] for s in stages]
    stages = _merge(stages, max_stages, weights)
    costs = [_stage_costs(s, mesh_shape) for s in stages]
    return stages, Chain(*(tuple(c[i] for c in costs) for i in range(4)))


@dataclass(frozen=True)
class CheckpointPlan:
    regions: tuple[tuple[str, ...], ...]  # traced node names of each recomputed region
    stages: int  # stages the graph was cut into
    extra_time: float  # s: forward time recomputed in backward
    bytes_saved: float  # bytes per device no longer held between forward and backward
    peak_before: float  # bytes: activation peak without checkpointing (chain model)
    peak_after: float  # bytes: activation peak with these regions
    budget: float  # bytes available for activations

    def report(self) -> str:
        from autopar.report.text import human_bytes, human_time

        lines = [f"activation checkpointing: {len(self.regions)} region(s) of {self.stages} stages recompute in "
                 f"backward; +{human_time(self.extra_time)} per step; activation peak "
                 f"{human_bytes(self.peak_before)} -> {human_bytes(self.peak_after)} "
                 f"(budget {human_bytes(self.budget)}), {human_bytes(self.bytes_saved)} fewer bytes kept"]
        for i, region in enumerate(self.regions):
            lines.append(f"  ckpt_{i}: {region[0]} .. {region[-1]} ({len(region)} nodes)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"regions": [list(r) for r in self.regions], "stages": self.stages, "extra_time": self.extra_time,
                "bytes_saved": self.bytes_saved, "peak_before": self.peak_before, "peak_after": self.peak_after,
                "budget": self.budget}


def _as_plan(stages, chain: Chain, schedule: Schedule, budget: float) -> CheckpointPlan:
    regions = tuple(tuple(n.name for i in range(a, b + 1) for n in stages[i])
                    for a, b, recomputed in schedule.segments if recomputed)
    kept = sum(chain.inputs[a] if r else sum(chain.saved[a:b + 1]) for a, b, r in schedule.segments)
    return CheckpointPlan(regions, len(stages), schedule.extra_time, sum(chain.saved) - kept,
                          no_checkpoint(chain).peak, schedule.peak, budget)


def plan_checkpoints(gm: fx.GraphModule, mesh_shape, activation_budget: float) -> CheckpointPlan:
    """The regions to recompute so the activation peak fits ``activation_budget`` at least extra time."""
    stages, chain = chain_of(gm, mesh_shape)
    return _as_plan(stages, chain, plan_chain(chain, activation_budget), activation_budget)


def checkpoint_modules(gm: fx.GraphModule, mesh_shape, module_names: list[str]) -> CheckpointPlan:
    """One region per named module (e.g. ``"transformer.h.0"``): its op nodes, as the user asked."""
    stages, chain = chain_of(gm, mesh_shape)
    regions = []
    for name in module_names:
        nodes = tuple(n.name for n in gm.graph.nodes if n.op not in _NOT_OPS and _in_module(n, name))
        if not nodes:
            raise ValueError(f"checkpoint: no op of the traced graph belongs to module {name!r}; "
                             f"give module paths like 'transformer.h.0' (see model.named_modules())")
        regions.append(nodes)
    peak = no_checkpoint(chain).peak
    return CheckpointPlan(tuple(regions), len(stages), 0.0, 0.0, peak, peak, float("inf"))


def _in_module(node: fx.Node, name: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == name or path.startswith(name + ".") for path, _type in stack.values())
