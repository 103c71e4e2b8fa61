"""ShardingPlan: the chosen Strategy per node, its predicted costs, and how it was found.

Frozen data, no graph references: it prints (``report()``), serialises (``to_json``/``save``/
``load``, specs as their strings), and answers ``strategy_of(name)`` for codegen.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from autopar.solver.strategy import Strategy
from autopar.spec import ShardingSpec


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One node of the plan. ``comm_time`` includes the resharding of this node's inputs."""

    name: str
    op: str
    shape: tuple | None  # output shape; a tuple of shapes for tuple outputs; None for non-tensors
    strategy: Strategy
    compute_time: float  # s
    comm_time: float  # s: the node's own collectives + resharding on its input edges
    memory: float  # bytes per device
    source: str = ""


@dataclass(frozen=True, slots=True)
class Fallback:
    name: str
    op: str
    source: str = ""


@dataclass(frozen=True)
class ShardingPlan:
    cluster: str  # ClusterInfo.describe()
    mesh_shape: tuple[int, ...]
    rows: tuple[PlanRow, ...]
    step_time: float  # s: predicted forward + backward time of one step
    peak_memory: float  # bytes per device at the peak step of the liveness analysis (memory.py)
    memory_budget: float  # bytes per device
    solver: str
    status: str  # "optimal", "feasible (time limit)" (sol_status 2: not proven optimal), ...
    solve_time: float  # s
    fallbacks: tuple[Fallback, ...] = ()
    memory: dict = field(default_factory=dict)  # at the peak step: params, grads, optimizer, activations,
    #                                             temporaries (bytes per device), and "step"
    stats: dict = field(default_factory=dict)  # ILP size: nodes, owners, merged, tied, variables, sol_status, ...
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {r.name: r for r in self.rows})

    # ---- queries -------------------------------------------------------------------------
    def row(self, name: str) -> PlanRow:
        try:
            return self._index[name]
        except KeyError:
            known = ", ".join(list(self._index)[:20])
            raise KeyError(f"the plan has no node named {name!r}; nodes: {known} ...") from None

    def strategy_of(self, name: str) -> Strategy:
        return self.row(name).strategy

    @property
    def compute_time(self) -> float:
        return sum(r.compute_time for r in self.rows)

    @property
    def comm_time(self) -> float:
        return sum(r.comm_time for r in self.rows)

    # ---- faces -----------------------------------------------------------------------------
    def report(self) -> str:
        from autopar.report.text import plan_table

        return plan_table(self)

    def __str__(self) -> str:
        return self.report()

    def to_json(self) -> dict:
        data = {k: getattr(self, k) for k in ("cluster", "step_time", "peak_memory", "memory_budget", "solver",
                                              "status", "solve_time")}
        data["mesh_shape"] = list(self.mesh_shape)
        data["rows"] = [_row_json(r) for r in self.rows]
        data["fallbacks"] = [asdict(f) for f in self.fallbacks]
        data["memory"] = dict(self.memory)
        data["stats"] = dict(self.stats)
        return data

    @classmethod
    def from_json(cls, data: dict) -> ShardingPlan:
        fields = {k: v for k, v in data.items() if k not in ("rows", "fallbacks", "mesh_shape", "memory", "stats")}
        return cls(mesh_shape=tuple(data["mesh_shape"]), rows=tuple(_row_from_json(r) for r in data["rows"]),
                   fallbacks=tuple(Fallback(**f) for f in data["fallbacks"]), memory=dict(data.get("memory", {})),
                   stats=dict(data.get("stats", {})), **fields)

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path) -> ShardingPlan:
        with open(path) as f:
            return cls.from_json(json.load(f))


def _spec_str(spec: ShardingSpec | None) -> str | None:
    return None if spec is None else str(spec)


def _spec_parse(text: str | None) -> ShardingSpec | None:
    return None if text is None else ShardingSpec.parse(text)


def _shape_json(shape):
    return None if shape is None else [_shape_json(s) if isinstance(s, (tuple, list)) else s for s in shape]


def _shape_parse(shape):
    return None if shape is None else tuple(_shape_parse(s) if isinstance(s, list) else s for s in shape)


def _row_json(r: PlanRow) -> dict:
    s = r.strategy
    return {"name": r.name, "op": r.op, "shape": _shape_json(r.shape), "strategy": str(s),
            "output": _spec_str(s.output), "inputs": [_spec_str(i) for i in s.inputs],
            "strategy_compute_time": s.compute_time, "strategy_comm_time": s.comm_time, "strategy_memory": s.memory,
            "compute_time": r.compute_time, "comm_time": r.comm_time, "memory": r.memory, "source": r.source}


def _row_from_json(d: dict) -> PlanRow:
    strategy = Strategy(_spec_parse(d["output"]), tuple(_spec_parse(i) for i in d["inputs"]),
                        d["strategy_compute_time"], d["strategy_comm_time"], d["strategy_memory"])
    return PlanRow(d["name"], d["op"], _shape_parse(d["shape"]), strategy, d["compute_time"], d["comm_time"],
                   d["memory"], d["source"])


def plan_from_choice(sg, cluster, choice: list[int], peak, budget: float, solver: str, status: str,
                     solve_time: float, stats: dict | None = None) -> ShardingPlan:
    """Write ``node.meta["strategy"]`` for the chosen strategy indices and collect the frozen plan.

    ``peak`` is the MemoryPeak of the liveness analysis; a row's comm time includes the resharding
    on its input edges, so ``step_time`` is exactly the ILP's objective.
    """
    from autopar.solver.strategies import op_key
    from autopar.tracer.meta import TensorMeta

    def shape(tm):
        if isinstance(tm, TensorMeta):
            return tuple(tm.shape)
        if isinstance(tm, tuple):
            return tuple(tuple(t.shape) if t is not None else None for t in tm)
        return None

    index = {n: k for k, n in enumerate(sg.nodes)}
    reshard = [0.0] * len(sg.nodes)
    for edge in sg.edges:
        reshard[index[edge.dst]] += float(edge.cost[choice[index[edge.src]], choice[index[edge.dst]]])
    rows, fallbacks = [], []
    for k, node in enumerate(sg.nodes):
        chosen: Strategy = node.meta["strategies"][choice[k]]
        node.meta["strategy"] = chosen
        source = node.meta.get("source", "") or ""
        rows.append(PlanRow(node.name, op_key(node), shape(node.meta.get("tensor")), chosen, chosen.compute_time,
                            chosen.comm_time + reshard[k], chosen.memory, source))
        if node.meta.get("fallback"):
            fallbacks.append(Fallback(node.name, op_key(node), source))
    return ShardingPlan(cluster=cluster.describe(), mesh_shape=tuple(cluster.mesh_shape), rows=tuple(rows),
                        step_time=sum(r.compute_time + r.comm_time for r in rows), peak_memory=peak.peak,
                        memory_budget=budget, solver=solver, status=status, solve_time=solve_time,
                        fallbacks=tuple(fallbacks), memory=peak.to_json(), stats=dict(stats or {}))
