"""Mesh search: plan a model on every logical mesh of a cluster's devices and keep the fastest (``mesh="search"``).

    python bench/mesh_search.py [--only gpt2-124m,llama-7b] [--max-ndim 2] [--fixed] [--workers N|auto]
                                [--out bench/out/mesh_search.json]

Per case: the model is built on ``meta`` and traced once; ``mesh_search.search`` plans every candidate mesh
(``candidates``: those respecting the nodes, less the dominated) and prints one row per mesh (predicted step
time, peak per device, planning seconds, or why it did not plan / which mesh dominates it). ``--fixed`` also
plans the dominated meshes, so the chosen mesh is compared with every fixed mesh. ``single`` is the
planning time of the cluster's own mesh alone (trace + its planning, as ``autopar.plan`` without ``mesh``);
``search`` is trace + the search's wall clock (every candidate's planning; ``--workers``: processes planning
them at once, ``PlanOptions.workers``); ``ratio`` = search / single. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time

CASES = [  # (name, zoo model, size, cluster preset)
    ("gpt2-124m", "gpt2", "124m", "8x8xH100"),
    ("llama-7b", "llama", "7b", "8x8xH100"),
    ("llama-8b", "llama", "8b", "8x8xH100"),
    ("llama-70b", "llama", "70b", "8x8xH100"),
    ("llama-8b-512", "llama", "8b", "8x8x8xH100"),
    ("llama-70b-512", "llama", "70b", "8x8x8xH100"),
]


def run_case(name: str, model: str, size: str, preset: str, time_limit: float, max_ndim: int, fixed: bool,
             workers: int | str = 1) -> dict:
    from autopar import ClusterInfo, zoo
    from autopar.options import PlanOptions
    from autopar.solver.mesh_search import search
    from autopar.solver.planner import plan_graph
    from autopar.tracer import trace

    cluster = ClusterInfo.preset(preset)
    options = PlanOptions(time_limit=time_limit, mesh="search", workers=workers)
    net, inputs = zoo.build(model, size, device="meta")
    t0 = time.perf_counter()
    gm = trace(net, inputs)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = search(gm, cluster, options, lambda line: print(f"  {line}", flush=True) if line.startswith("mesh")
                  else None, max_ndim=max_ndim)
    search_wall = time.perf_counter() - t0
    rows = [dict(mesh=t.label, step_time_s=t.step_time, peak_gib=t.peak_memory / 2**30 if t.peak_memory else None,
                 plan_s=t.seconds, note=t.note, chosen=t.mesh == plan.mesh_shape) for t in plan.meshes]
    if fixed:  # the dominated meshes too, each planned as a fixed mesh
        for row in rows:
            if row["note"].startswith("dominated"):
                shape = tuple(int(n) for n in row["mesh"].split("x"))
                t0 = time.perf_counter()
                p = plan_graph(gm, cluster.with_mesh(shape), options)
                row.update(step_time_s=p.step_time, peak_gib=p.peak_memory / 2**30, fixed_s=time.perf_counter() - t0)
                print(f"  fixed {row['mesh']}: {p.step_time * 1e3:.3f} ms ({row['fixed_s']:.1f} s)", flush=True)
    own = next((t for t in plan.meshes if t.mesh == cluster.mesh_shape), None)  # None: more axes than searched
    single = trace_s + own.seconds if own is not None else None
    searched = trace_s + search_wall  # wall clock: with workers > 1 the meshes' seconds overlap
    return dict(case=name, cluster=preset, max_ndim=max_ndim, workers=workers, trace_s=trace_s, single_s=single,
                search_s=searched,
                ratio=searched / single if single else None, chosen="x".join(map(str, plan.mesh_shape)),
                step_time_s=plan.step_time, own_mesh_step_time_s=own.step_time if own else None, meshes=rows)


def _print(case: dict) -> None:
    single = (f"single mesh {case['single_s']:.1f} s, search {case['search_s']:.1f} s ({case['ratio']:.1f}x)"
              if case["single_s"] else f"search {case['search_s']:.1f} s (the cluster's own mesh was not searched)")
    print(f"{case['case']} on {case['cluster']} (meshes of up to {case['max_ndim']} axes): chosen {case['chosen']}, "
          f"{case['step_time_s'] * 1e3:.3f} ms per step; trace {case['trace_s']:.1f} s, {single}")
    print(f"  {'mesh':<9} {'step ms':>9} {'peak GiB':>9} {'plan s':>7}  note")
    for r in case["meshes"]:
        step = f"{r['step_time_s'] * 1e3:.3f}" if r["step_time_s"] is not None else "-"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        plan_s = r["plan_s"] or r.get("fixed_s") or 0.0
        note = "chosen" if r["chosen"] else r["note"]
        print(f"  {r['mesh']:<9} {step:>9} {peak:>9} {plan_s:>7.1f}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/mesh_search.json")
    parser.add_argument("--only", default="gpt2-124m,llama-7b,llama-70b", help="comma-separated case names")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--max-ndim", type=int, default=3, help="search meshes of up to this many axes")
    parser.add_argument("--fixed", action="store_true", help="also plan the dominated meshes")
    parser.add_argument("--workers", default="1", help="processes planning the meshes at once (an integer or auto)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cases = []
    for case in CASES:
        if case[0] in args.only.split(","):
            print(f"{case[0]} on {case[3]} ...", flush=True)
            workers = args.workers if args.workers == "auto" else int(args.workers)
            cases.append(run_case(*case, time_limit=args.time_limit, max_ndim=args.max_ndim, fixed=args.fixed,
                                  workers=workers))
            _print(cases[-1])
            gc.collect()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cpu_count": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3], "cases": cases},
                  f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
