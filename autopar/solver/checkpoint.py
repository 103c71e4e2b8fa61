"""Stage 2: which activations recompute in backward, on the per-device costs of the sharding plan.

1. ``_stages`` cuts the traced graph into stages at the points where exactly one tensor that
   carries a gradient crosses (masks, ids and other tensors without gradient are free to cross:
   a checkpoint region takes them as extra inputs); a stage where nothing carries a gradient
   joins the next.
2. ``chain_of`` prices each stage on one device under the chosen strategies (handed in as
   ``strategy_of``): forward time (the forward share of the strategies' compute time), bytes saved
   for backward (each storage once, resharded copies included: ``checkpoint_saved``), bytes of the
   tensor entering it, and what the stage holds above the activations before it while it runs:
   its own saved bytes so far plus, at each of its steps, everything besides activations
   (parameters, optimizer state, the gradients produced so far, live outputs and copies:
   ``timeline.background``, the liveness account of ``memory.py``); and the storages without
   gradient that several stages hold or read (``Chain.shared``: a region keeps those it reads,
   once). Short stages are merged so the chain has at most ``max_stages`` stages. The chain's
   peaks are then the whole device's, compared with the whole budget, and never below the
   ``Timeline`` of the same schedule.
3. ``plan_checkpoints`` runs the exact chain DP (``checkpoint_dp``) for the budget and returns a
   CheckpointPlan: the recomputed regions as lists of traced node names.

A stage holding a *stateful* node (``stateful``: BatchNorm updating its running statistics, an
in-place update of a buffer such as ``num_batches_tracked.add_(1)``, any in-place op left in the
graph) is never recomputed (``Chain.fixed``): recomputing it would apply the update twice, and
autograd refuses to re-run an op whose saved input was modified in place. A region the user names
is cut around such nodes the same way (``module_regions``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from autopar.solver.checkpoint_dp import Chain, Schedule, no_checkpoint, plan_chain
from autopar.solver.checkpoint_saved import StrategyOf, root_bytes, root_key, root_keys, saved_storages
from autopar.solver.cost_model import local_bytes
from autopar.tracer.canonical import updates_statistics
from autopar.tracer.meta import is_multi, tensor_meta
from autopar.tracer.ops import Prop, has, inplace_name

_NOT_OPS = ("placeholder", "get_attr", "output")
Background = dict  # node name -> (bytes besides activations at its forward step, at its backward step)


def _carries_grad(node: fx.Node) -> bool:
    tm = node.meta.get("tensor")
    metas = tm if is_multi(tm) else (tm,)
    return any(t is not None and t.requires_grad for t in metas)


def _stages(gm: fx.GraphModule) -> list[tuple[list[fx.Node], fx.Node | None]]:
    """(stage, the gradient-carrying tensor live across the cut before it: what a region there keeps).

    A stage in which nothing carries a gradient (building a mask, position ids) joins the next
    stage, so every stage reads the tensor entering it and a region never starts at a stage that
    only passes that tensor through.
    """
    ops = [n for n in gm.graph.nodes if n.op not in _NOT_OPS]
    position = {n: i for i, n in enumerate(ops)}
    end = len(ops)
    last_use = {n: max((position.get(u, end) for u in n.users), default=position[n]) for n in ops}
    stages: list[tuple[list[fx.Node], fx.Node | None]] = [([], None)]
    live: set[fx.Node] = set()
    for i, node in enumerate(ops):
        stages[-1][0].append(node)
        if _carries_grad(node):
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if len(live) == 1 and i + 1 < end and any(_carries_grad(n) for n in stages[-1][0]):
            stages.append(([], next(iter(live))))
    return [(stage, entry) for stage, entry in stages if stage]


def stateful(node: fx.Node) -> bool:
    """Whether running ``node`` again would change state: an in-place op, or batch_norm in training with
    running statistics."""
    op = node.meta.get("op") or ""
    if op == "batch_norm":
        return updates_statistics(node)
    return has(op, Prop.INPLACE) or op == "setitem" or inplace_name(op)


def forward_time(nodes, strategy_of: StrategyOf) -> float:
    """Seconds of forward work of ``nodes`` under their strategies (what recomputing them costs)."""
    forward = 0.0
    for node in nodes:
        strategy = strategy_of(node)
        if strategy is None:
            continue
        profile = node.meta.get("profile")
        total = (profile.fwd_flops + profile.bwd_flops) if profile else 0.0
        forward += strategy.compute_time * (profile.fwd_flops / total if total else 0.5)
    return forward


def _stage_costs(stage: list[fx.Node], entry: fx.Node | None, by_name: dict, mesh_shape, strategy_of: StrategyOf
                 ) -> tuple[float, float]:
    """(forward time, input bytes x) of one stage; saved and held bytes come from ``_held``.

    x is what a checkpoint of the stage keeps: the storage its input lives in, which for a view (a column
    ``select``ed from a larger output) is the whole base, as the Timeline holds it (fuzz seed 30325: a 20-byte
    view of a 100-byte output counted as 20, so recomputing the stage seemed to save 80 bytes it did not).
    """
    x = 0.0
    if entry is not None:
        strategy = strategy_of(entry)
        x = local_bytes(tensor_meta(entry), strategy.output, mesh_shape) if strategy is not None \
            else tensor_meta(entry).nbytes
        roots = [r for r in entry.meta["storage"].roots if r is not None] if "storage" in entry.meta else []
        kept = root_keys(by_name, roots, mesh_shape, strategy_of)
        if kept:
            x = max(x, sum(kept.values()))
    return forward_time(stage, strategy_of), x


def _spans(gm: fx.GraphModule, stages: list[list[fx.Node]]) -> list[list[fx.Node]]:
    """Each stage's nodes with the placeholders, parameters and output around them: a node that is not
    an op joins the stage of the op before it (the first stage before any op), so every step of the
    schedule is in some stage's account."""
    stage_of = {n: i for i, stage in enumerate(stages) for n in stage}
    spans: list[list[fx.Node]] = [[] for _ in stages]
    current = 0
    for node in gm.graph.nodes:
        current = stage_of.get(node, current)
        if spans:
            spans[current].append(node)
    return spans


def _held(stage: list[fx.Node], saves: dict, shared: dict, background: Background) -> tuple[float, float]:
    """(s, t) of one stage: the bytes it saves (each storage once, shared ones aside) and, above them,
    the most it holds besides: max over its nodes of (its saved bytes up to that node + that node's
    background in forward or backward) - s. A storage an earlier stage saved too is counted again
    here, so the chain never counts less than the Timeline of any schedule (the earlier saver may
    be recomputed, leaving this one to hold it)."""
    seen = set(shared)
    saved = top = 0.0
    for node in stage:
        for key, size in saves.get(node, {}).items():
            if key not in seen:
                seen.add(key)
                saved += size
        fwd, bwd = background.get(node.name, (0.0, 0.0))
        top = max(top, saved + max(fwd, bwd))
    return saved, top - saved


def _saved(stages: list[list[fx.Node]], saves: dict, shared: dict) -> list[float]:
    """Per stage, the bytes of the storages it saves that no earlier stage saved, shared ones aside."""
    seen = set(shared)
    out = []
    for stage in stages:
        total = 0.0
        for node in stage:
            for key, size in saves.get(node, {}).items():
                if key not in seen:
                    seen.add(key)
                    total += size
        out.append(total)
    return out


def _merge(stages: list[tuple[list[fx.Node], fx.Node | None]], max_stages: int, weights: list[float]):
    """Adjacent stages joined greedily until there are at most ``max_stages`` of similar saved bytes
    (a joined stage keeps the entry of its first part)."""
    if len(stages) <= max_stages:
        return stages
    target = sum(weights) / max_stages
    out: list[tuple[list[fx.Node], fx.Node | None]] = []
    acc = 0.0
    for (stage, entry), w in zip(stages, weights):
        if not out or (acc + w > target and len(out) < max_stages):
            out.append(([], entry))
            acc = 0.0
        out[-1][0].extend(stage)
        acc += w
    return out


def chain_of(gm: fx.GraphModule, mesh_shape, strategy_of: StrategyOf, background: Background,
             max_stages: int = 48) -> tuple[list[list[fx.Node]], Chain]:
    """The stages of ``gm`` under the plan ``strategy_of`` and their per-device chain costs."""
    saves = saved_storages(gm, mesh_shape, strategy_of)
    stages = _stages(gm)
    stages = _merge(stages, max_stages, _saved([s for s, _e in stages], saves, {}))
    nodes = [s for s, _e in stages]
    by_name = {n.name: n for n in gm.graph.nodes}
    costs = [_stage_costs(s, e, by_name, mesh_shape, strategy_of) for s, e in stages]
    shared, reads, born = _shared_storages(gm, nodes, mesh_shape, strategy_of)
    held = [_held(span, saves, shared, background) for span in _spans(gm, nodes)]
    holds = tuple(sum(1 << r for r, key in enumerate(shared) if any(key in saves.get(n, {}) for n in stage))
                  for stage in nodes)
    fixed = tuple(any(stateful(n) for n in stage) for stage in nodes)
    return nodes, Chain(tuple(c[0] for c in costs), tuple(h[0] for h in held), tuple(c[1] for c in costs),
                        tuple(h[1] for h in held), tuple(shared.values()), holds, reads, born, fixed)


def _shared_storages(gm: fx.GraphModule, stages: list[list[fx.Node]], mesh_shape, strategy_of: StrategyOf):
    """The storages without gradient that several stages use (masks, rotary tables, ids; ``Chain.shared``).

    Returns ({storage key: local bytes}, per stage the bitmask of those it reads from before it,
    per storage the stage that makes it (-1: a model input)).
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    stage_of = {n: i for i, stage in enumerate(stages) for n in stage}
    index: dict[tuple, int] = {}
    reads = [0] * len(stages)
    for i, stage in enumerate(stages):
        inside = set(stage)
        for node in stage:
            for arg in node.all_input_nodes:
                if arg in inside or arg.op == "get_attr" or _carries_grad(arg) or "storage" not in arg.meta:
                    continue
                for root in arg.meta["storage"].roots:
                    if root is not None and by_name[root[0]].op != "get_attr":
                        reads[i] |= 1 << index.setdefault(root, len(index))
    shared = {root_key(root): root_bytes(by_name[root[0]], root[1], mesh_shape, strategy_of) for root in index}
    born = tuple(stage_of.get(by_name[name], -1) for name, _i in index)
    return shared, tuple(reads), born


@dataclass(frozen=True)
class CheckpointPlan:
    """The recomputed regions and what they cost and save, per device (whole-device bytes)."""

    regions: tuple[tuple[str, ...], ...]  # traced node names of each recomputed region
    stages: int  # stages the graph was cut into
    extra_time: float  # s: forward time recomputed in backward
    bytes_saved: float  # bytes per device no longer held between forward and backward
    peak_before: float  # bytes: the device's peak without checkpointing (chain account)
    peak_after: float  # bytes: the device's peak with these regions (chain account)
    budget: float  # bytes per device the schedule was fitted to
    kept: float = 0.0  # bytes per device held for backward when forward ends, with these regions

    def report(self) -> str:
        from autopar.report.text import human_bytes, human_time

        lines = [f"activation checkpointing: {len(self.regions)} region(s) of {self.stages} stages recompute in "
                 f"backward; +{human_time(self.extra_time)} per step; peak per device "
                 f"{human_bytes(self.peak_before)} -> {human_bytes(self.peak_after)} "
                 f"(budget {human_bytes(self.budget)}), {human_bytes(self.bytes_saved)} fewer bytes kept"]
        for i, region in enumerate(self.regions):
            lines.append(f"  ckpt_{i}: {region[0]} .. {region[-1]} ({len(region)} nodes)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"regions": [list(r) for r in self.regions], "stages": self.stages, "extra_time": self.extra_time,
                "bytes_saved": self.bytes_saved, "peak_before": self.peak_before, "peak_after": self.peak_after,
                "budget": _finite(self.budget), "kept": self.kept}

    @classmethod
    def from_json(cls, data: dict) -> CheckpointPlan:
        fields = dict(data, regions=tuple(tuple(r) for r in data["regions"]))
        fields["budget"] = float("inf") if fields["budget"] is None else fields["budget"]
        return cls(**fields)


def _finite(x: float) -> float | None:
    return None if x == float("inf") else x


def as_plan(stages, chain: Chain, schedule: Schedule, budget: float) -> CheckpointPlan:
    """The CheckpointPlan of ``schedule`` (any schedule of ``chain``: the DP's, Chen's, none)."""
    regions = tuple(tuple(n.name for i in range(a, b + 1) for n in stages[i])
                    for a, b, recomputed in schedule.segments if recomputed)
    return CheckpointPlan(regions, len(stages), schedule.extra_time, sum(chain.saved) - schedule.retained,
                          no_checkpoint(chain).peak, schedule.peak, budget, schedule.retained)


def plan_checkpoints(stages: list[list[fx.Node]], chain: Chain, budget: float) -> CheckpointPlan:
    """The regions to recompute so the device's peak fits ``budget`` at least extra time (``chain_of``'s
    stages and chain; raises InfeasibleBudgetError with the smallest peak any schedule reaches)."""
    return as_plan(stages, chain, plan_chain(chain, budget), budget)


def module_regions(gm: fx.GraphModule, module_names) -> tuple[tuple[str, ...], ...]:
    """One region per named module (e.g. ``"transformer.h.0"``): its op nodes, as the user asked."""
    from autopar.errors import AutoparError

    regions = []
    for name in module_names:
        nodes = [n for n in gm.graph.nodes if n.op not in _NOT_OPS and _in_module(n, name)]
        if not nodes:
            raise AutoparError(f"checkpoint: no op of the traced graph belongs to module {name!r}; "
                               f"give module paths like 'transformer.h.0' (see model.named_modules())")
        run: list[str] = []  # consecutive nodes between stateful ones: each run is one region
        for n in nodes + [None]:
            if n is None or stateful(n):
                if run:
                    regions.append(tuple(run))
                run = []
            else:
                run.append(n.name)
    return tuple(regions)


def _in_module(node: fx.Node, name: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == name or path.startswith(name + ".") for path, _type in stack.values())
