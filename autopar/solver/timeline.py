"""The per-device memory of one training step under a plan: bytes per category at every step.

One account that every stage's memory figure comes from (``Plan.peak_memory``, stage 2's chain, the
report and the HTML timeline):

- **parameters, gradients, optimizer state, temporaries**: the liveness analysis of ``memory.py``
  (the ILP's own model) for the chosen strategies: the state by ``state_factors(dtype, optimizer)``,
  a gradient from the backward step that produces it, outputs and their gradients while they are
  live, resharded copies at the step that makes them;
- **activations**: what each node keeps for backward on one device (``checkpoint_saved``: each
  storage once, resharded copies included), simulated over the schedule: held from the forward
  step of the node that first keeps it to that node's backward step. Inside a recomputed region the
  first forward keeps only the region's inputs (from its first node to the end of its backward);
  just before the backward of the region's last node the region's forward runs again
  (``recompute`` steps) and its nodes keep what they save until their own backward.

Steps are the graph's nodes in order (forward), the recompute steps inserted where they run, then
the nodes in reverse (backward). ``background`` gives, per node, what a step holds besides
activations, in forward and in backward: what stage 2's chain adds to its activations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from autopar.solver.checkpoint_saved import StrategyOf, root_keys
from autopar.solver.memory import CATEGORIES, MemoryModel

_NOT_OPS = ("placeholder", "get_attr", "output")


@dataclass(frozen=True)
class RegionSpan:
    """Where a recomputed region sits in a Timeline: step indices, first and last inclusive."""

    index: int
    forward: tuple[int, int]
    recompute: tuple[int, int]

    def to_json(self) -> dict:
        return {"index": self.index, "name": f"ckpt_{self.index}", "forward": list(self.forward),
                "recompute": list(self.recompute)}


@dataclass(frozen=True)
class Timeline:
    steps: tuple[str, ...]  # "%name" of the node each step runs
    phase: tuple[str, ...]  # "forward", "recompute" or "backward"
    series: dict  # category -> tuple of bytes per step (CATEGORIES)
    regions: tuple[RegionSpan, ...] = ()

    def totals(self) -> np.ndarray:
        return np.sum([np.asarray(self.series[c]) for c in CATEGORIES], axis=0) if self.steps else np.zeros(0)

    @property
    def peak(self) -> float:
        total = self.totals()
        return float(total.max()) if len(total) else 0.0

    @property
    def peak_step(self) -> int:
        return int(np.argmax(self.totals())) if self.steps else 0

    def kept(self) -> float:
        """Activation bytes held for backward when forward ends (what ``runtime.saved_probe`` measures)."""
        last = max((i for i, p in enumerate(self.phase) if p == "forward"), default=None)
        return float(self.series["activations"][last]) if last is not None else 0.0

    def breakdown(self, step: int | None = None) -> dict:
        """Bytes per category at ``step`` (default: the peak), and which step it is."""
        at = self.peak_step if step is None else step
        out = {c: float(self.series[c][at]) for c in CATEGORIES} if self.steps else dict.fromkeys(CATEGORIES, 0.0)
        out["step"] = f"{self.phase[at]} {self.steps[at]}" if self.steps else "-"
        out["peak"] = sum(out[c] for c in CATEGORIES)
        return out

    def to_json(self) -> dict:
        return {"steps": list(self.steps), "phase": list(self.phase),
                **{c: [float(v) for v in self.series[c]] for c in CATEGORIES},
                "regions": [r.to_json() for r in self.regions]}

    @classmethod
    def from_json(cls, data: dict) -> Timeline:
        regions = tuple(RegionSpan(r["index"], tuple(r["forward"]), tuple(r["recompute"]))
                        for r in data.get("regions", ()))
        return cls(tuple(data["steps"]), tuple(data["phase"]), {c: tuple(data[c]) for c in CATEGORIES}, regions)


def background(mm: MemoryModel, choice) -> dict[str, tuple[float, float]]:
    """Per node name: (bytes besides activations at its forward step, at its backward step)."""
    prof = mm.profile(choice)
    n = len(mm.names)
    other = sum(prof[c] for c in CATEGORIES if c != "activations")
    return {name: (float(other[k]), float(other[2 * n - 1 - k])) for k, name in enumerate(mm.names)}


def simulate(gm: fx.GraphModule, mm: MemoryModel, choice, strategy_of: StrategyOf, saves: dict,
             regions: tuple[tuple[str, ...], ...] = ()) -> Timeline:
    """The Timeline of the plan ``choice`` (strategy indices of ``mm``'s nodes) with ``regions`` recomputed.

    ``saves``: ``checkpoint_saved.saved_storages`` of the same plan ({node: {storage key: bytes}}).
    """
    prof = mm.profile(choice)
    n = len(mm.names)
    nodes = list(mm.sg.nodes)
    mesh = mm.sg.cluster.mesh_shape
    by_name = {v.name: v for v in gm.graph.nodes}
    region_of = {name: r for r, region in enumerate(regions) for name in region}
    first = {r: min((k for k, v in enumerate(nodes) if region_of.get(v.name) == r), default=None)
             for r in range(len(regions))}
    last = {r: max((k for k, v in enumerate(nodes) if region_of.get(v.name) == r), default=None)
            for r in range(len(regions))}

    held: dict = {}  # storage key -> its holder: a node name, or ("region", r)
    keys_of: dict = {}  # holder -> the keys it holds
    bytes_of: dict = {}
    act = 0.0
    steps, phase, acts, other = [], [], [], []

    def hold(key, size, holder) -> None:
        nonlocal act
        if key not in held:
            held[key], bytes_of[key] = holder, size
            keys_of.setdefault(holder, []).append(key)
            act += size

    def free(holder) -> None:
        nonlocal act
        for key in keys_of.pop(holder, ()):
            act -= bytes_of.pop(key)
            del held[key]

    def record(k: int, kind: str, backward: bool) -> None:
        steps.append(f"%{mm.names[k]}")
        phase.append(kind)
        acts.append(act)
        at = 2 * n - 1 - k if backward else k
        other.append({c: float(prof[c][at]) for c in CATEGORIES if c != "activations"})

    def region_inputs(r: int) -> dict:
        inside = set(regions[r])
        out = {}
        for name in regions[r]:
            node = by_name.get(name)
            for arg in node.all_input_nodes if node is not None else ():
                if arg.name in inside or arg.op == "get_attr" or "storage" not in arg.meta:
                    continue
                out.update(root_keys(by_name, [r for r in arg.meta["storage"].roots if r is not None], mesh,
                                     strategy_of))
        return out

    for k, v in enumerate(nodes):  # forward
        r = region_of.get(v.name)
        if r is None:
            for key, size in saves.get(v, {}).items():
                hold(key, size, v.name)
        elif k == first[r]:
            for key, size in region_inputs(r).items():
                hold(key, size, ("region", r))
        record(k, "forward", False)
    forward_end = len(steps)
    spans: dict[int, list] = {}
    for k in range(n - 1, -1, -1):  # backward, each region's forward again before its last node's backward
        r = region_of.get(nodes[k].name)
        if r is not None and k == last[r]:
            start = len(steps)
            for j in range(first[r], last[r] + 1):
                if region_of.get(nodes[j].name) == r:
                    for key, size in saves.get(nodes[j], {}).items():
                        hold(key, size, nodes[j].name)
                    record(j, "recompute", False)
            spans[r] = [start, len(steps) - 1]
        record(k, "backward", True)
        free(nodes[k].name)
        if r is not None and k == first[r]:
            free(("region", r))
    series = {"activations": tuple(acts)}
    for c in CATEGORIES:
        if c != "activations":
            series[c] = tuple(o[c] for o in other)
    spans_out = tuple(RegionSpan(r, (first[r], last[r]), tuple(spans[r])) for r in sorted(spans)
                      if first[r] is not None and first[r] < forward_end)
    return Timeline(tuple(steps), tuple(phase), {c: series[c] for c in CATEGORIES}, spans_out)
