"""Plain-text tables of a ShardingPlan, in the report's language (``S0S1 = S0R x RS1``)."""
from __future__ import annotations


def human_time(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def human_bytes(n: float) -> str:
    if n == 0:
        return "0"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _budget(n: float) -> str:
    return "no budget" if n == float("inf") else human_bytes(n)


def _gap(plan) -> str:
    """``, proven gap 0.42 %`` when the time limit stopped the search (sol_status 2), else nothing."""
    stats = plan.stats
    if stats.sol_status != 2 or stats.objective <= 0:
        return ""
    return f", proven gap {100 * stats.gap:.2f} %" if stats.gap != float("inf") else ", gap unknown (no bound)"


def _shape(shape) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join(map(str, shape)) + ")"


def _memory_lines(plan) -> list[str]:
    """The peak's breakdown (liveness over forward and backward) and the ILP's size."""
    mem, st = plan.memory, plan.stats
    parts = ", ".join(f"{k} {human_bytes(getattr(mem, k))}"
                      for k in ("params", "grads", "optimizer", "activations", "temporaries"))
    return [f"peak at {mem.step}: {parts}",
            f"ILP: {st.variables} variables, {st.constraints} constraints ({st.nodes} nodes: {st.merged} merged into "
            f"their producer, {st.tied} owners tied across {st.repeats} repeated layers; {st.memory_rows} memory "
            f"rows; optimizer {st.optimizer})"]


def plan_report(plan) -> str:
    """A whole Plan: its figures with recomputation, the sharding table, the checkpoint regions, how it was chosen."""
    budget = plan.memory_budget
    tl = plan.timeline.breakdown()
    parts = ", ".join(f"{k} {human_bytes(tl[k])}" for k in ("params", "grads", "optimizer", "activations",
                                                            "temporaries"))
    opts = plan.options
    lines = [f"Plan on {plan.cluster.describe()}",
             f"predicted step time {human_time(plan.step_time)}"
             + (f" (incl. {human_time(plan.checkpoint.extra_time)} recomputation)" if plan.checkpoint else "")
             + (f" (incl. {human_time(plan.offload.time)} offload)" if plan.offload else "")
             + f", peak memory {human_bytes(plan.peak_memory)} per device (budget {human_bytes(budget)})",
             f"peak at {tl['step']}: {parts}",
             f"options: optimizer {opts.optimizer}, checkpoint {opts.checkpoint!r}, offload {opts.offload!r}, "
             f"time limit {opts.time_limit:g} s"]
    if plan.offload is not None:
        lines.append(plan.offload.describe())
    lines.append("")
    lines.append(plan_table(plan.sharding))
    if plan.checkpoint is not None:
        lines += ["", plan.checkpoint.report()]
    if plan.notes:
        lines += ["", "candidates weighed:"] + [f"  {n}" for n in plan.notes]
    if plan.meshes:
        lines += ["", mesh_table(plan)]
    return "\n".join(lines)


def mesh_table(plan) -> str:
    """A mesh search's table: every mesh weighed, its predicted step time, peak and planning seconds (or why not)."""
    head = ("mesh", "links", "step time", "peak", "plan s", "")
    rows = []
    for t in plan.meshes:
        links = "/".join("in" if plan.cluster.topology.inside_node(t.mesh, a) else "out" for a in range(len(t.mesh)))
        chosen = "chosen" if t.mesh == plan.mesh_shape else t.note
        rows.append((t.label, links, human_time(t.step_time) if t.step_time is not None else "-",
                     human_bytes(t.peak_memory) if t.peak_memory is not None else "-",
                     f"{t.seconds:.2f}" if t.seconds else "-", chosen))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def fmt(row):
        cells = (c.rjust(w) if 2 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    planned = sum(1 for t in plan.meshes if t.seconds)
    total = sum(t.seconds for t in plan.meshes)
    return "\n".join([f"mesh search: {planned} of {len(plan.meshes)} meshes planned in {total:.2f} s "
                      f"(links per axis: in = inside a node, out = across nodes)", fmt(head),
                      "  ".join("-" * w for w in widths[:-1]), *[fmt(r) for r in rows]])


def plan_table(plan) -> str:
    """One row per node (name, op, output shape, strategy, compute, comm, memory), totals, fallbacks."""
    head = ("node", "op", "shape", "strategy", "compute", "comm", "memory")
    rows = [(r.name, r.op, _shape(r.shape), str(r.strategy), human_time(r.compute_time), human_time(r.comm_time),
             human_bytes(r.memory)) for r in plan.rows]
    rows.append(("total", "", "", "", human_time(plan.compute_time), human_time(plan.comm_time),
                 human_bytes(plan.peak_memory)))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    right = {4, 5, 6}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    lines = [
        f"ShardingPlan on {plan.cluster}",
        f"sharding alone: step time {human_time(plan.step_time)}, peak memory {human_bytes(plan.peak_memory)} per "
        f"device by stage 1's liveness (solved under {_budget(plan.memory_budget)}); solver {plan.solver}: "
        f"{plan.status}{_gap(plan)} in {human_time(plan.solve_time)}",
        *_memory_lines(plan),
        "",
        fmt(head), rule, *[fmt(r) for r in rows[:-1]], rule, fmt(rows[-1]),
    ]
    if plan.fallbacks:
        lines += ["", f"{len(plan.fallbacks)} op(s) without a sharding rule ran replicated:"]
        lines += [f"  %{f.name} ({f.op}){' at ' + f.source if f.source else ''}" for f in plan.fallbacks]
    return "\n".join(lines)
