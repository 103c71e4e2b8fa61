"""Plan: everything that runs, as frozen data. ``autopar.plan()`` returns it, ``autoparallelize()`` runs it.

    plan = autopar.plan(model, cluster, inputs, memory_budget=..., checkpoint="auto")
    plan.save("gpt2.plan.json")                         # JSON: format version, cluster, options, fingerprint
    plan = autopar.load_plan("gpt2.plan.json")
    module = autopar.autoparallelize(model, cluster, inputs, plan=plan)   # no solving; every rank uses it

A Plan holds the ShardingPlan (one strategy per traced node), the CheckpointPlan (or None), the
options and cluster it was made for, the traced graph's fingerprint and input shapes, and the
per-device memory Timeline of one step under both (``peak_memory`` is its peak: what a budget is
checked against). ``check_matches`` refuses a plan made for another graph, cluster or inputs,
saying what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError
from autopar.options import PlanOptions
from autopar.solver.checkpoint import CheckpointPlan
from autopar.solver.memory import MemoryBreakdown
from autopar.solver.offload import OffloadPlan
from autopar.solver.plan import ShardingPlan
from autopar.solver.timeline import Timeline

FORMAT, VERSION = "autopar.plan", 1


class PlanMismatchError(AutoparError):
    """A saved plan does not fit the model, cluster or inputs it is applied to."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One example input of the traced graph: its name, global shape (None: not a tensor) and dtype."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str

    def __str__(self) -> str:
        return f"{self.name} {self.shape if self.shape is not None else '(not a tensor)'} {self.dtype}"


@dataclass(frozen=True, slots=True)
class MeshTrial:
    """One logical mesh a mesh search weighed (``mesh="search"``): its predicted step time and peak per device
    when it planned, else None and why not (``note``); ``seconds``: its planning time (0 when never planned)."""

    mesh: tuple[int, ...]
    step_time: float | None
    peak_memory: float | None
    seconds: float
    note: str = ""

    @property
    def label(self) -> str:
        return "x".join(map(str, self.mesh))

    def to_json(self) -> dict:
        return {"mesh": list(self.mesh), "step_time": self.step_time, "peak_memory": self.peak_memory,
                "seconds": self.seconds, "note": self.note}

    @classmethod
    def from_json(cls, data: dict) -> MeshTrial:
        return cls(tuple(data["mesh"]), data["step_time"], data["peak_memory"], data["seconds"], data.get("note", ""))


@dataclass(frozen=True)
class Plan:
    sharding: ShardingPlan
    checkpoint: CheckpointPlan | None
    options: PlanOptions
    cluster: ClusterInfo
    fingerprint: str  # graph_fingerprint of the traced graph
    inputs: tuple[InputSpec, ...]
    timeline: Timeline  # bytes per category per step, with the recomputation schedule
    memory_budget: float  # bytes per device the plan was checked against
    notes: tuple[str, ...] = ()  # how it was chosen (the candidates stage 2 weighed)
    meshes: tuple[MeshTrial, ...] = ()  # with mesh="search": every mesh weighed, this plan's among them
    offload: OffloadPlan | None = None  # the share of the state on the host and its transfers (None: no offload)

    # ---- the figures a user plans by -------------------------------------------------------
    @property
    def step_time(self) -> float:
        """Predicted seconds per step: the sharding plan's time plus the recomputation and offload's transfers."""
        return (self.sharding.step_time + (self.checkpoint.extra_time if self.checkpoint is not None else 0.0)
                + (self.offload.time if self.offload is not None else 0.0))

    @property
    def peak_memory(self) -> float:
        """Predicted bytes per device at the peak of the step, with the recomputation schedule."""
        return self.timeline.peak

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return self.sharding.mesh_shape

    @property
    def regions(self) -> tuple[tuple[str, ...], ...]:
        return self.checkpoint.regions if self.checkpoint is not None else ()

    @property
    def memory(self) -> MemoryBreakdown:
        """Bytes per category at the peak step of the Timeline."""
        return MemoryBreakdown.from_json(self.timeline.breakdown())

    # the sharding plan's rows, as a reader of a Plan expects them
    @property
    def rows(self):
        return self.sharding.rows

    def row(self, name: str):
        return self.sharding.row(name)

    def strategy_of(self, name: str):
        return self.sharding.strategy_of(name)

    @property
    def fallbacks(self):
        return self.sharding.fallbacks

    @property
    def status(self) -> str:
        return self.sharding.status

    # ---- faces -----------------------------------------------------------------------------
    def report(self) -> str:
        from autopar.report.text import plan_report

        return plan_report(self)

    def __str__(self) -> str:
        return self.report()

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION,
            "cluster": cluster_json(self.cluster), "cluster_description": self.cluster.describe(),
            "options": self.options.to_json(), "fingerprint": self.fingerprint,
            "inputs": [{"name": i.name, "shape": list(i.shape) if i.shape is not None else None, "dtype": i.dtype}
                       for i in self.inputs],
            "step_time": self.step_time, "peak_memory": self.peak_memory,
            "memory_budget": None if self.memory_budget == float("inf") else self.memory_budget,
            "memory": self.memory.to_json(), "notes": list(self.notes),
            "sharding": self.sharding.to_json(),
            "checkpoint": self.checkpoint.to_json() if self.checkpoint is not None else None,
            "timeline": self.timeline.to_json(),
            "edges": [r.to_json() for r in self.sharding.reshards],
            "meshes": [t.to_json() for t in self.meshes],
            "offload": self.offload.to_json() if self.offload is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        if data.get("format") != FORMAT:
            raise AutoparError(f"not an autopar plan (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != VERSION:
            raise AutoparError(f"this plan has format version {data.get('version')}, this autopar reads version "
                               f"{VERSION}: plan the model again with autopar.plan(...) and save it")
        inputs = tuple(InputSpec(i["name"], tuple(i["shape"]) if i["shape"] is not None else None, i["dtype"])
                       for i in data["inputs"])
        ckpt = CheckpointPlan.from_json(data["checkpoint"]) if data.get("checkpoint") else None
        return cls(ShardingPlan.from_json(data["sharding"]), ckpt, PlanOptions.from_json(data["options"]),
                   cluster_from_json(data["cluster"]), data["fingerprint"], inputs,
                   Timeline.from_json(data["timeline"]),
                   float("inf") if data["memory_budget"] is None else float(data["memory_budget"]),
                   tuple(data.get("notes", ())), tuple(MeshTrial.from_json(t) for t in data.get("meshes", ())),
                   OffloadPlan.from_json(data["offload"]) if data.get("offload") else None)

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1, allow_nan=False)

    def to_html(self, path) -> None:
        """One self-contained page (no network): blocks, strategies, resharding, the memory timeline."""
        from autopar.report.html import write_html

        write_html(self.to_json(), path)

    # ---- applying a saved plan ---------------------------------------------------------------
    def check_matches(self, gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions | None = None) -> None:
        """Raise PlanMismatchError naming what differs between this plan and ``gm`` on ``cluster``."""
        problems = []
        if cluster_json(cluster) != cluster_json(self.cluster):
            mine, theirs = cluster_json(self.cluster), cluster_json(cluster)
            diffs = [f"{k}: {mine.get(k)!r} (plan) vs {theirs.get(k)!r}" for k in mine if mine.get(k) != theirs.get(k)]
            problems.append("the cluster differs: " + "; ".join(diffs))
        got = {i.name: i for i in input_specs(gm)}
        for want in self.inputs:
            have = got.pop(want.name, None)
            if have is None:
                problems.append(f"the plan was made with input {want}, which was not given")
            elif (have.shape, have.dtype) != (want.shape, want.dtype):
                problems.append(f"input {want.name!r} has shape {have.shape} {have.dtype}, the plan was made for "
                                f"{want.shape} {want.dtype}")
        problems += [f"input {extra} is not in the plan" for extra in got.values()]
        if not problems and graph_fingerprint(gm) != self.fingerprint:
            problems.append("the traced graph differs from the one planned: " + _first_difference(gm, self.sharding))
        if options is not None:
            diffs = [d for d in self.options.differences(options)  # options the plan does not depend on
                     if not d.startswith(("kernels:", "init:", "seed:", "workers:"))]
            if diffs:
                problems.append("the options differ from the plan's (" + "; ".join(diffs) + ")")
        if problems:
            raise PlanMismatchError("this plan does not fit: " + " | ".join(problems)
                                    + ". Plan again with autopar.plan(...) on this model, cluster and inputs.")


def load_plan(path) -> Plan:
    """The Plan saved at ``path`` (``Plan.save``)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise AutoparError(f"cannot read a plan from {path}: {exc}") from exc
    return Plan.from_json(data)


def cluster_json(cluster: ClusterInfo) -> dict:
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v
    return plain(dataclasses.asdict(cluster))


def cluster_from_json(data: dict) -> ClusterInfo:
    """The ClusterInfo of ``cluster_json`` (a plan saved before clusters had a topology has none)."""
    return ClusterInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def input_specs(gm: fx.GraphModule) -> tuple[InputSpec, ...]:
    out = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            tm = node.meta.get("tensor")
            shape = tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None
            dtype = str(tm.dtype) if shape is not None else type(node.meta.get("val")).__name__
            out.append(InputSpec(node.target, shape, dtype))
    return tuple(out)


def _node_line(node: fx.Node) -> str:
    tm = node.meta.get("tensor")
    shape = (tuple(tm.shape), str(tm.dtype)) if tm is not None and hasattr(tm, "shape") else \
        tuple((tuple(t.shape), str(t.dtype)) if t is not None else None for t in tm) if isinstance(tm, tuple) else None
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.name}|{node.op}|{node.meta.get('op')}|{target}|{shape}|{[a.name for a in node.all_input_nodes]}"


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """A hash of every node's name, kind, canonical op, target, output shapes/dtypes and inputs."""
    digest = hashlib.sha256()
    for node in gm.graph.nodes:
        digest.update(_node_line(node).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def _first_difference(gm: fx.GraphModule, sharding: ShardingPlan) -> str:
    from autopar.solver.strategies import op_key

    nodes = list(gm.graph.nodes)
    for k, node in enumerate(nodes):
        if k >= len(sharding.rows):
            return f"the graph has more nodes than the plan ({len(nodes)} vs {len(sharding.rows)}), from %{node.name}"
        row = sharding.rows[k]
        tm = node.meta.get("tensor")
        shape = tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else row.shape
        if (row.name, row.op) != (node.name, op_key(node)) or (hasattr(tm, "shape") and row.shape != shape):
            return (f"node {k}: the plan has %{row.name} ({row.op}, {row.shape}), the graph %{node.name} "
                    f"({op_key(node)}, {shape}){' at ' + node.meta['source'] if node.meta.get('source') else ''}")
    if len(nodes) < len(sharding.rows):
        return f"the graph has fewer nodes than the plan ({len(nodes)} vs {len(sharding.rows)})"
    return "the nodes' inputs or dtypes differ"
