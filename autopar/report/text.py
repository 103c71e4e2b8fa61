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


def _shape(shape) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join(map(str, shape)) + ")"


def _memory_lines(plan) -> list[str]:
    """The peak's breakdown (liveness over forward and backward) and the ILP's size, when recorded."""
    lines = []
    mem = getattr(plan, "memory", None) or {}
    if mem:
        parts = ", ".join(f"{k} {human_bytes(mem.get(k, 0.0))}"
                          for k in ("params", "grads", "optimizer", "activations", "temporaries"))
        lines.append(f"peak at {mem.get('step', '?')}: {parts}")
    stats = getattr(plan, "stats", None) or {}
    if stats:
        lines.append(f"ILP: {stats.get('variables', '?')} variables, {stats.get('constraints', '?')} constraints "
                     f"({stats.get('nodes', '?')} nodes: {stats.get('merged', 0)} merged into their producer, "
                     f"{stats.get('tied', 0)} owners tied across {stats.get('repeats', 0)} repeated layers; "
                     f"{stats.get('memory_rows', 0)} memory rows; optimizer {stats.get('optimizer', '?')})")
    return lines


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
        f"predicted step time {human_time(plan.step_time)}, peak memory {human_bytes(plan.peak_memory)} per device "
        f"(budget {human_bytes(plan.memory_budget)}); solver {plan.solver}: {plan.status} in "
        f"{human_time(plan.solve_time)}",
        *_memory_lines(plan),
        "",
        fmt(head), rule, *[fmt(r) for r in rows[:-1]], rule, fmt(rows[-1]),
    ]
    if plan.fallbacks:
        lines += ["", f"{len(plan.fallbacks)} op(s) without a sharding rule ran replicated:"]
        lines += [f"  %{f.name} ({f.op}){' at ' + f.source if f.source else ''}" for f in plan.fallbacks]
    return "\n".join(lines)
