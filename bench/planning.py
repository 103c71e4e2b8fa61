"""Planning time at scale: trace, strategies and ILP solve, and the ILP's size, per (model, mesh).

    python bench/planning.py [--out bench/out/planning.json] [--only gpt2-124m,llama-7b] [--time-limit 300]

Every model is built from its config on ``meta`` (no weights, no downloads) through ``autopar.zoo``.
The model's construction is not counted: ``trace`` is tracing and profiling the graph, ``strategies``
is ``build_strategies`` (candidates + resharding matrices), ``solve`` is the ILP (reductions, memory
rows, HiGHS; ``gap``: the relative gap it proved, 0 when optimal), ``memory`` is the plan's per-device
Timeline (what ``autopar.plan`` adds to check the budget with every saved copy counted), all on one
process. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time

CASES = [  # (name, zoo model, size, cluster preset)
    ("gpt2-124m", "gpt2", "124m", "2x4xH100"),
    ("llama-7b", "llama", "7b", "8x8xH100"),
    ("llama-70b", "llama", "70b", "8x8x8xH100"),
    ("llama-405b", "llama", "405b", "16x8x8xH100"),  # 1024 devices
]


def run_case(name: str, model: str, size: str, preset: str, time_limit: float) -> dict:
    from autopar import ClusterInfo, zoo
    from autopar.options import PlanOptions
    from autopar.solver.build import build_strategies
    from autopar.solver.ilp import solve
    from autopar.solver.planner import Planner
    from autopar.tracer import trace

    cluster = ClusterInfo.preset(preset)
    row: dict = {"case": name, "mesh": preset, "stage": "model"}
    t0 = time.perf_counter()
    net, inputs = zoo.build(model, size, device="meta")
    row["params"] = sum(p.numel() for p in net.parameters())
    row["model_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        gm = trace(net, inputs)
        row["trace_s"], row["stage"] = time.perf_counter() - t0, "trace"
        t0 = time.perf_counter()
        sg = build_strategies(gm, cluster)
        row["strategies_s"], row["stage"] = time.perf_counter() - t0, "strategies"
        row.update(nodes=len(sg.nodes), candidates=sg.num_strategies(), edges=len(sg.edges))
        t0 = time.perf_counter()
        plan = solve(sg, cluster, time_limit=time_limit)
        row["solve_s"], row["stage"] = time.perf_counter() - t0, "solved"
        t0 = time.perf_counter()
        timeline = Planner(gm, cluster, PlanOptions(), strategy_graph=sg).timeline(plan)
        row["memory_s"], row["stage"] = time.perf_counter() - t0, "memory"
        row["timeline_peak_gib"] = timeline.peak / 2**30
        row.update(status=plan.status, step_time_s=plan.step_time, peak_gib=plan.peak_memory / 2**30,
                   **{k: getattr(plan.stats, k)
                      for k in ("variables", "constraints", "owners", "merged", "tied", "memory_rows", "gap")})
    except Exception as exc:  # report how far it got
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    row["total_s"] = sum(row.get(k, 0.0) for k in ("trace_s", "strategies_s", "solve_s", "memory_s"))
    return row


def _fmt(row: dict) -> str:
    def t(k):
        return f"{row[k]:.1f}" if k in row else "-"
    return (f"{row['case']:<10} {row['mesh']:<11} {row['params'] / 1e9:>6.2f}B "
            f"{t('trace_s'):>6} {t('strategies_s'):>6} "
            f"{t('solve_s'):>6} {t('memory_s'):>6} {t('total_s'):>6} "
            f"{row.get('nodes', '-'):>6} {row.get('owners', '-'):>6} "
            f"{row.get('variables', '-'):>8} {row.get('constraints', '-'):>7} {row.get('memory_rows', '-'):>5} "
            f"{_gap(row):>6} {row.get('status', row.get('error', row['stage']))}")


def _gap(row: dict) -> str:
    """The proven relative gap of the ILP (0 % when optimal)."""
    return f"{100 * row['gap']:.2f}%" if "gap" in row else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/planning.json")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cases = [c for c in CASES if not args.only or c[0] in args.only.split(",")]
    print(f"{'case':<10} {'mesh':<11} {'params':>7} {'trace':>6} {'strat':>6} {'solve':>6} {'memory':>6} {'total':>6} "
          f"{'nodes':>6} {'owners':>6} {'ILP vars':>8} {'rows':>7} {'mem':>5} {'gap':>6} status   (seconds)")
    rows = []
    for case in cases:
        rows.append(run_case(*case, time_limit=args.time_limit))
        print(_fmt(rows[-1]), flush=True)
        gc.collect()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
