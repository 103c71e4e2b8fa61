"""Activation checkpointing: predicted vs measured bytes kept for backward and extra time, DP vs Chen vs none.

    python bench/checkpoint.py [--out bench/out/checkpoint.json] [--only gpt2,llama] [--points 6] [--repeats 5]

For each model (GPT-2 and Llama configs built from transformers, on CPU, one process), the traced
graph is planned on one CPU device (``cpu:1``: stage 1, then stage 2's chain), and these
schedules are priced and run: no checkpointing, Chen's sqrt(n) schedule, and the DP at a sweep of
device budgets from the no-checkpoint peak down to the smallest peak any schedule reaches.

Columns (MiB, ms): ``budget`` the bytes per device given to the DP; ``peak`` the schedule's
predicted peak per device (chain account: parameters, optimizer state, gradients so far,
activations and temporaries); ``kept`` the predicted bytes held for backward when forward ends
(the plan's ``Timeline``); ``measured`` the same, counted by ``autopar.runtime.saved_probe``
(distinct storages autograd saved plus checkpoint-region inputs, parameters left out); ``err``
(kept - measured) / measured; ``extra`` the predicted recompute time (cost model, ``cpu`` preset)
and ``meas+`` the measured forward + backward time with the regions minus without: CPU seconds of
one thread, so other work on the machine does not skew them, median of ``--repeats`` paired runs;
``dp<=chen``: at a budget Chen's schedule fits, whether the DP's predicted extra time is at most
Chen's. Prints the table and writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import time

CONFIGS = {  # name -> (transformers config kwargs, batch, seq)
    "gpt2": (dict(n_layer=6, n_embd=256, n_head=4, vocab_size=512, n_positions=256), 4, 256),
    "llama": (dict(num_hidden_layers=6, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512, max_position_embeddings=256), 4, 256),
}


def build(name: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from autopar.zoo import lm_inputs

    kwargs, batch, seq = CONFIGS[name]
    torch.manual_seed(0)
    if name == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    else:
        model = LlamaForCausalLM(LlamaConfig(**kwargs, attention_dropout=0.0))
    inputs = lm_inputs(batch, seq, kwargs["vocab_size"], "cpu")
    inputs["labels"] = inputs["labels"].clone()  # its own storage, as the graph assumes of two inputs
    return model, inputs


def kept_bytes(gm, inputs) -> int:
    """Bytes held for backward at the end of one forward (then runs its backward)."""
    from autopar.runtime.saved_probe import SavedTensorsProbe

    with SavedTensorsProbe(gm) as probe:
        loss = gm(**inputs).loss
    kept = probe.nbytes()
    loss.backward()
    return kept


def step_time(gm, inputs) -> float:
    """CPU seconds of one forward + backward (on one thread: see ``main``)."""
    gm.zero_grad(set_to_none=True)
    t0 = time.process_time()
    gm(**inputs).loss.backward()
    return time.process_time() - t0


def extra_time(gm, base, inputs, repeats: int) -> tuple[float, float]:
    """(median of paired differences step(gm) - step(base), median step(gm)): pairs cancel drift."""
    pairs = [(step_time(base, inputs), step_time(gm, inputs)) for _ in range(repeats)]
    return statistics.median(b - a for a, b in pairs), statistics.median(b for _a, b in pairs)


def run_model(name: str, points: int, repeats: int) -> list[dict]:
    from autopar import ClusterInfo
    from autopar.options import PlanOptions
    from autopar.runtime.checkpoint_regions import wrap_traced
    from autopar.solver.checkpoint import as_plan
    from autopar.solver.checkpoint_dp import chen_schedule, min_peak, no_checkpoint, plan_chain
    from autopar.solver.planner import INF, Planner
    from autopar.tracer import trace

    model, inputs = build(name)
    gm = trace(model, inputs)
    cluster = ClusterInfo.preset("cpu:1")
    planner = Planner(gm, cluster, PlanOptions())
    sharding = planner.solve(INF)  # stage 2 prices the chain under this plan's strategies
    stages, chain = planner.chain(sharding)
    none, chen = no_checkpoint(chain), chen_schedule(chain)
    hi, lo = none.peak, min_peak(chain)
    schedules = [("none", hi, none), ("chen", chen.peak, chen)]
    for i in range(points):
        budget = hi - (hi - lo) * i / (points - 1)
        schedules.append(("dp", budget, plan_chain(chain, budget)))
    base = wrap_traced(gm, ())
    step_time(base, inputs)  # warm-up
    rows = []
    for kind, budget, schedule in schedules:
        plan = as_plan(stages, chain, schedule, budget)
        plan = dataclasses.replace(plan, kept=planner.timeline(sharding, plan.regions).kept())
        ckpt = wrap_traced(gm, plan.regions)
        kept = kept_bytes(ckpt, inputs)
        measured_extra, seconds = extra_time(ckpt, base, inputs, repeats)
        row = {"model": name, "schedule": kind, "budget": budget, "stages": len(chain),
               "regions": len(plan.regions), "peak": schedule.peak, "peak_none": hi, "peak_chen": chen.peak,
               "kept": plan.kept, "measured": kept, "error": (plan.kept - kept) / kept,
               "extra": schedule.extra_time, "measured_extra": measured_extra, "step": seconds}
        if kind == "dp" and budget >= chen.peak:
            row["dp_le_chen"] = schedule.extra_time <= chen.extra_time + 1e-12
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def _mb(x: float) -> str:
    return f"{x / 2**20:.2f}"


COLUMNS = [  # (header, width, cell): the table's header and rows come from one list
    ("model", -6, lambda r: r["model"]), ("sched", -5, lambda r: r["schedule"]),
    ("budget", 7, lambda r: _mb(r["budget"])), ("regs", 4, lambda r: r["regions"]),
    ("peak", 7, lambda r: _mb(r["peak"])), ("kept", 7, lambda r: _mb(r["kept"])),
    ("measured", 8, lambda r: _mb(r["measured"])), ("err", 7, lambda r: f"{100 * r['error']:+.1f}%"),
    ("extra", 7, lambda r: f"{1e3 * r['extra']:.1f}"), ("meas+", 7, lambda r: f"{1e3 * r['measured_extra']:.1f}"),
    ("dp<=chen", 8, lambda r: {True: "yes", False: "NO"}.get(r.get("dp_le_chen"), "-")),
]


def _line(cells) -> str:
    return " ".join(f"{cell:<{-w}}" if w < 0 else f"{cell:>{w}}" for cell, (_h, w, _f) in zip(cells, COLUMNS))


def _fmt(row: dict) -> str:
    return _line([str(cell(row)) for _h, _w, cell in COLUMNS])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/checkpoint.json")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--points", type=int, default=6, help="DP budgets in the sweep")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per schedule (median)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)  # step_time counts CPU seconds: one thread keeps them comparable
    names = [n for n in CONFIGS if not args.only or n in args.only.split(",")]
    print(_line([h for h, _w, _f in COLUMNS]) + "   (MiB, ms)")
    rows = [row for name in names for row in run_model(name, args.points, args.repeats)]
    worst = max(abs(r["error"]) for r in rows)
    print(f"largest |error| {100 * worst:.1f}%; DP extra <= Chen extra wherever Chen fits: "
          f"{all(r.get('dp_le_chen', True) for r in rows)}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "configs": CONFIGS,
                   "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
