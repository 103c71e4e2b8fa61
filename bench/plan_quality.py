"""autopar's plan against hand plans, all priced by the same cost and memory model.

    python bench/plan_quality.py [--out bench/out/plan_quality.json] [--quick]

A hand plan is a rule on the candidate strategies of every node (the same lists the ILP sees);
within the rule, the same ILP (same reductions, no budget) picks the cheapest plan, so a hand
plan is the best plan of its family, and its time and peak memory come from the same objective
and liveness model as autopar's (the comparison is exact). Families:

    dp        parameters replicated; every tensor split only on dim 0 (the batch, or batch*seq)
    megatron  2-D weights split over all mesh axes; inputs replicated; no tensor split on dim 0
    dp x tp   (2-D meshes) axis 0 data: only dim 0 split on it, parameters whole on it;
              axis 1 tensor: 2-D weights split on it, dim 0 never split on it
    zero3     parameters (and so their gradients and optimizer state) split over all mesh axes,
              all-gathered for use (the edge into the consumer); every tensor split only on dim 0

autopar solves with the budget. Acceptance: on every grid point, autopar's predicted step time is
at most the fastest hand plan that fits (the families are subsets of autopar's search space).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

GiB = 2**30


def _axes(spec):
    return spec.used_axes() if spec is not None else set()


def _dim0_only(strategy, axes=None) -> bool:
    """No tensor of the strategy is split on a dim other than 0 (on ``axes``, default all)."""
    for spec in (strategy.output, *strategy.inputs):
        if spec is None:
            continue
        for d, dim_axes in enumerate(spec.dims):
            if d > 0 and any(axes is None or a in axes for a in dim_axes):
                return False
    return True


def _is_storage(node) -> bool:
    return node.op == "get_attr" or node.meta.get("op") in ("param", "buffer")


def rules(mesh_shape):
    everything = {a for a, n in enumerate(mesh_shape) if n > 1}

    def dp(node, s):
        return s.output.is_replicated() if _is_storage(node) else _dim0_only(s)

    def megatron(node, s):
        if node.op == "placeholder":
            return s.output.is_replicated()
        if _is_storage(node):
            return s.output.ndim < 2 or _axes(s.output) == everything
        return all(spec is None or not spec.dims or not spec.dims[0] for spec in (s.output, *s.inputs))

    def dp_tp(node, s):
        if _is_storage(node):
            return 0 not in _axes(s.output) and (s.output.ndim < 2 or 1 in _axes(s.output))
        if not _dim0_only(s, axes={0}):
            return False
        return all(spec is None or not spec.dims or 1 not in spec.dims[0] for spec in (s.output, *s.inputs))

    def zero3(node, s):
        return _axes(s.output) == everything if _is_storage(node) else _dim0_only(s)

    out = {"dp": dp, "megatron": megatron, "zero3": zero3}
    if len(mesh_shape) == 2:
        out["dp x tp"] = dp_tp
    return out


def models(quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from autopar import zoo

    yield "gpt2-124m", lambda: zoo.build("gpt2", "124m", device="meta")
    if quick:
        return

    def llama_1b():
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        ids = torch.empty(8, 1024, dtype=torch.long, device="meta")
        return model, {"input_ids": ids, "labels": ids, "use_cache": False}
    yield "llama-1b", llama_1b


def evaluate(name, build, preset, time_limit):
    from autopar import ClusterInfo
    from autopar.errors import AutoparError, InfeasibleBudgetError
    from autopar.solver.build import build_strategies
    from autopar.solver.ilp import solve
    from autopar.tracer import trace

    cluster = ClusterInfo.preset(preset)
    model, inputs = build()
    sg = build_strategies(trace(model, inputs), cluster)
    hand = {k: solve(sg, cluster, memory_budget=1e18, restrict=r, time_limit=time_limit)
            for k, r in rules(cluster.mesh_shape).items()}
    free = solve(sg, cluster, memory_budget=1e18, time_limit=time_limit)
    try:
        solve(sg, cluster, memory_budget=1.0, time_limit=time_limit)
    except InfeasibleBudgetError as err:
        smallest = err.min_budget
    # generous (the device), between the smallest feasible budget and the free plan's peak, just above the smallest
    budgets = [cluster.memory_per_device, 0.5 * (smallest + free.peak_memory), 1.02 * smallest]
    out = []
    for budget in budgets:
        row = {"model": name, "mesh": preset, "budget_gib": budget / GiB,
               "hand": {k: {"step_ms": p.step_time * 1e3, "peak_gib": p.peak_memory / GiB,
                            "fits": p.peak_memory <= budget * (1 + 1e-9)} for k, p in hand.items()}}
        try:
            t0 = time.perf_counter()
            plan = solve(sg, cluster, memory_budget=budget, time_limit=time_limit)
            row["autopar"] = {"step_ms": plan.step_time * 1e3, "peak_gib": plan.peak_memory / GiB,
                              "status": plan.status, "solve_s": time.perf_counter() - t0}
        except InfeasibleBudgetError as err:
            row["autopar"] = {"infeasible": True, "min_budget_gib": err.min_budget / GiB}
        except AutoparError:  # the time limit stopped the search before any plan was found
            row["autopar"] = {"infeasible": True, "min_budget_gib": float("nan"), "timeout": True}
        fitting = [(v["step_ms"], k) for k, v in row["hand"].items() if v["fits"]]
        row["best_hand"] = min(fitting)[1] if fitting else None
        a = row["autopar"]
        if "step_ms" not in a:
            row["ok"] = not fitting
            row["note"] = ("time limit: no plan found" if a.get("timeout") else "no plan fits") + (
                "" if not fitting else " but a hand plan does")
        elif not fitting:
            row["ok"], row["note"] = True, "no hand plan fits"
        else:
            best = min(fitting)[0]
            row["ok"] = a["step_ms"] <= best * (1 + 1e-6)
            row["note"] = "" if row["ok"] else (
                f"autopar {a['status']}: slower than {row['best_hand']} (time limit, or shared layers under a binding "
                f"budget restrict autopar where the hand family's shared layers do not)")
        out.append(row)
    return out


def _print(rows, families):
    head = f"{'model':<10} {'mesh':<9} {'budget':>7} | " + " | ".join(f"{f:>16}" for f in families)
    print(head + f" | {'autopar':>18} | best hand  ok")
    for r in rows:
        cells = []
        for f in families:
            h = r["hand"].get(f)
            cells.append(f"{'-':>16}" if h is None else
                         f"{h['step_ms']:7.2f}ms {h['peak_gib']:5.1f}G{'' if h['fits'] else '!'}".rjust(16))
        a = r["autopar"]
        auto = (f"{a['step_ms']:7.2f}ms {a['peak_gib']:5.1f}G" if "step_ms" in a
                else f"infeasible>{a['min_budget_gib']:.1f}G")
        print(f"{r['model']:<10} {r['mesh']:<9} {r['budget_gib']:6.1f}G | " + " | ".join(cells) +
              f" | {auto:>18} | {str(r['best_hand']):<9}  {'yes' if r['ok'] else 'NO ' + r['note']}")
    print("(step time ms, peak GiB per device; '!' = does not fit the budget)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/plan_quality.json")
    parser.add_argument("--quick", action="store_true", help="GPT-2 124M only")
    parser.add_argument("--time-limit", type=float, default=60.0)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    rows = []
    for name, build in models(args.quick):
        for preset in ("8xH100", "2x4xH100"):
            rows += evaluate(name, build, preset, args.time_limit)
            print(f"... {name} on {preset} done", flush=True)
    _print(rows, ["dp", "megatron", "dp x tp", "zero3"])
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}; all ok: {all(r['ok'] for r in rows)}")


if __name__ == "__main__":
    main()
