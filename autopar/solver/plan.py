"""ShardingPlan: the chosen Strategy per node, its predicted costs, and how it was found.

Frozen data, no graph references: it prints (``report()``), serialises (``to_json``/``from_json``,
specs as their strings), and answers ``strategy_of(name)``; ``strategy_lookup()`` is how stage 2,
codegen and the runtime passes read it (nothing is written into the graph). The whole plan that
runs (this, the checkpoint plan, options, cluster) is ``autopar.plan.Plan``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from autopar.solver.memory import MemoryBreakdown
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
    module: str = ""  # the innermost module the node was traced in ("transformer.h.0.attn"), "" at top level


@dataclass(frozen=True, slots=True)
class Fallback:
    name: str
    op: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class Reshard:
    """One resharding the plan makes: ``src``'s output, laid out as ``before``, arrives at ``dst`` as ``after``."""

    src: str
    dst: str
    before: ShardingSpec
    after: ShardingSpec
    time: float  # s, forward + backward
    bytes: float  # bytes of the tensor on one device, as it arrives

    def to_json(self) -> dict:
        return {"src": self.src, "dst": self.dst, "from": str(self.before), "to": str(self.after), "time": self.time,
                "bytes": self.bytes}

    @classmethod
    def from_json(cls, d: dict) -> Reshard:
        return cls(d["src"], d["dst"], ShardingSpec.parse(d["from"]), ShardingSpec.parse(d["to"]), d["time"],
                   d["bytes"])


@dataclass(frozen=True, slots=True)
class IlpStats:
    """The size of the solved ILP and how it was reduced (solver/merge.py)."""

    nodes: int = 0
    owners: int = 0  # nodes with variables of their own
    merged: int = 0  # nodes that follow their producer
    tied: int = 0  # owners sharing another's variables across repeated layers
    repeats: int = 0  # repeated layers found
    variables: int = 0
    memory_rows: int = 0
    constraints: int = 0
    sol_status: int = 1  # PuLP's: 1 optimal, 2 feasible (time limit)
    optimizer: str = "adamw"
    objective: float = 0.0  # s: the solver's objective value at the plan it returned
    gap: float = 0.0  # proven relative gap (objective - bound) / objective: 0 when optimal, > 0 after a time limit
    bound: float = 0.0  # s: the solver's proven lower bound on the objective (its dual bound)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardingPlan:
    """Stage 1's result: one Strategy per node, its predicted time and the liveness peak (memory.py)."""

    cluster: str  # ClusterInfo.describe()
    mesh_shape: tuple[int, ...]
    rows: tuple[PlanRow, ...]
    step_time: float  # s: predicted forward + backward time of one step (the ILP's objective)
    peak_memory: float  # bytes per device at the peak step of stage 1's liveness analysis (memory.py)
    memory_budget: float  # bytes per device it was solved under (inf: none)
    solver: str
    status: str  # "optimal", "feasible (time limit)" (sol_status 2: not proven optimal), ...
    solve_time: float  # s
    fallbacks: tuple[Fallback, ...] = ()
    memory: MemoryBreakdown = field(default_factory=lambda: MemoryBreakdown(0.0, "-"))  # at the peak step
    stats: IlpStats = field(default_factory=IlpStats)
    reshards: tuple[Reshard, ...] = ()  # every resharding on an edge, in graph order
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

    def get(self, name: str) -> Strategy | None:
        """The chosen strategy of node ``name``, or None when the plan has no such node."""
        row = self._index.get(name)
        return row.strategy if row is not None else None

    def strategy_lookup(self):
        """``node -> Strategy | None`` for the traced nodes that hold a tensor (or are parameters):
        how stage 2, codegen and the runtime passes read this plan."""
        def of(node):
            if node.meta.get("tensor") is None and node.op != "get_attr":
                return None
            return self.get(node.name)
        return of

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
        data = {k: getattr(self, k) for k in ("cluster", "step_time", "peak_memory", "solver", "status",
                                              "solve_time")}
        data["memory_budget"] = None if self.memory_budget == float("inf") else self.memory_budget
        data["mesh_shape"] = list(self.mesh_shape)
        data["rows"] = [_row_json(r) for r in self.rows]
        data["fallbacks"] = [asdict(f) for f in self.fallbacks]
        data["memory"] = self.memory.to_json()
        data["stats"] = self.stats.to_json()
        data["edges"] = [r.to_json() for r in self.reshards]
        return data

    @classmethod
    def from_json(cls, data: dict) -> ShardingPlan:
        skip = ("rows", "fallbacks", "mesh_shape", "memory", "stats", "edges", "memory_budget")
        fields_ = {k: v for k, v in data.items() if k not in skip}
        budget = data.get("memory_budget")
        return cls(mesh_shape=tuple(data["mesh_shape"]), rows=tuple(_row_from_json(r) for r in data["rows"]),
                   fallbacks=tuple(Fallback(**f) for f in data["fallbacks"]),
                   memory=MemoryBreakdown.from_json(data.get("memory", {})),
                   stats=IlpStats(**data.get("stats", {})),
                   reshards=tuple(Reshard.from_json(e) for e in data.get("edges", ())),
                   memory_budget=float("inf") if budget is None else budget, **fields_)


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
            "compute_time": r.compute_time, "comm_time": r.comm_time, "memory": r.memory, "source": r.source,
            "module": r.module}


def _row_from_json(d: dict) -> PlanRow:
    strategy = Strategy(_spec_parse(d["output"]), tuple(_spec_parse(i) for i in d["inputs"]),
                        d["strategy_compute_time"], d["strategy_comm_time"], d["strategy_memory"])
    return PlanRow(d["name"], d["op"], _shape_parse(d["shape"]), strategy, d["compute_time"], d["comm_time"],
                   d["memory"], d["source"], d.get("module", ""))


def plan_from_choice(sg, cluster, choice: list[int], peak: MemoryBreakdown, budget: float, solver: str,
                     status: str, solve_time: float, stats: IlpStats) -> ShardingPlan:
    """The frozen plan of the chosen strategy indices (the graph is only read).

    ``peak`` is the liveness analysis's peak; a row's comm time includes the resharding on its
    input edges, so ``step_time`` is exactly the ILP's objective.
    """
    from autopar.solver.build import _edge_meta
    from autopar.solver.cost_model import local_bytes
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
    reshards = []
    for edge in sg.edges:
        i, j = choice[index[edge.src]], choice[index[edge.dst]]
        cost = float(edge.cost[i, j])
        reshard[index[edge.dst]] += cost
        if cost > 0:
            before = edge.src.meta["strategies"][i].output
            after = edge.dst.meta["strategies"][j].inputs[edge.index]
            tm, _whole = _edge_meta(edge.src, edge.dst)
            reshards.append(Reshard(edge.src.name, edge.dst.name, before, after, cost,
                                    local_bytes(tm, after, cluster.mesh_shape) if tm is not None else 0.0))
    rows, fallbacks = [], []
    for k, node in enumerate(sg.nodes):
        chosen: Strategy = node.meta["strategies"][choice[k]]
        source = node.meta.get("source", "") or ""
        rows.append(PlanRow(node.name, op_key(node), shape(node.meta.get("tensor")), chosen, chosen.compute_time,
                            chosen.comm_time + reshard[k], chosen.memory, source, module_of(node)))
        if node.meta.get("fallback"):
            fallbacks.append(Fallback(node.name, op_key(node), source))
    return ShardingPlan(cluster=cluster.describe(), mesh_shape=tuple(cluster.mesh_shape), rows=tuple(rows),
                        step_time=sum(r.compute_time + r.comm_time for r in rows), peak_memory=peak.peak,
                        memory_budget=budget, solver=solver, status=status, solve_time=solve_time,
                        fallbacks=tuple(fallbacks), memory=peak, stats=stats, reshards=tuple(reshards))


def module_of(node) -> str:
    """The innermost module path a node was traced in ("" at the top level, or for parameters: their owner)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        return list(stack.values())[-1][0]
    param = node.meta.get("param")
    return param.rsplit(".", 1)[0] if isinstance(param, str) and "." in param else ""


def choice_of(sg, plan: ShardingPlan) -> list[int]:
    """The strategy index of every node of ``sg`` that ``plan`` chose (matched by specs)."""
    out = []
    for node in sg.nodes:
        want = plan.strategy_of(node.name).key
        keys = [s.key for s in node.meta["strategies"]]
        try:
            out.append(keys.index(want))
        except ValueError:
            raise ValueError(f"the plan's strategy {plan.strategy_of(node.name)} for %{node.name} is not one of "
                             f"its candidates") from None
    return out
