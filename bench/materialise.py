"""Memory of starting on meta: per-rank resident memory before and after materialisation and after one step.

    PYTHONPATH=. python bench/materialise.py [--out bench/out/materialise.json] [--layers 22] [--old auto|yes|no]

A Llama config of about 1.1B parameters (TinyLlama's shape: hidden 2048, 22 layers, 32 heads, 4 KV
heads, vocab 32000; fp32) is planned once on meta for 4 gloo ranks under a memory budget that
shards its weights (``--budget`` GiB per rank, SGD, no checkpointing), then run on 4 spawned
processes two ways:

- ``meta``: every rank builds the model on meta and ``autoparallelize`` makes only its shards
  (the model's seeded initialisers, one full tensor at a time);
- ``full`` (the old path): every rank builds the full model on CPU, then ``autoparallelize`` cuts
  its shards out of it. It needs world x the model's bytes at once; with ``--old auto`` it runs only
  where the machine has that much memory available, and otherwise on a smaller config
  (``--old-layers``), next to the meta path on that same config.

Columns (GiB, per rank): ``shards`` the parameter and buffer bytes the plan predicts per device;
``largest`` the largest single parameter; ``bound`` = 1.25 x shards + largest (the acceptance
bound); ``before`` resident memory (VmRSS) before the model is built (libraries imported and run once
on a tiny model); ``+mat`` its growth once
``autoparallelize`` returned (``+peak``: the high-water mark, VmHWM, over that span); ``+step``
the growth after one forward, backward and SGD step (gradients add about one more ``shards``),
next to ``plan pk``, the plan's predicted peak per device for the step; ``<=bound``: ``+peak`` <=
``bound`` (the full-model path is not meant to meet it). A 7B config is planned on meta (no run):
the bytes each rank would hold. Prints the table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

GIB = 2**30
LLAMA_1B = dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
LLAMA_7B = dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
BATCH, SEQ = 4, 128


def _build(config: dict, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(LlamaConfig(**config, attention_dropout=0.0))


def _inputs(device: str):
    import torch

    from autopar.zoo import lm_inputs

    torch.manual_seed(0)
    return lm_inputs(BATCH, SEQ, 32000, device)


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    """Start VmHWM afresh at the current VmRSS (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _warm_up() -> None:
    """Import and run once what ``autoparallelize`` imports lazily (transformers' Llama, tracer, planner,
    codegen), on a tiny model, so the baseline holds the libraries and the growth is the model's."""
    import autopar
    from autopar import zoo

    model, inputs = zoo.build("llama", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:1")
    autopar.plan(model, cluster, inputs, checkpoint="none")


def _run_rank(rank, world_size, config, plan, path) -> dict:
    import torch

    import autopar

    logging.getLogger("transformers").setLevel(logging.ERROR)
    inputs = _inputs("cpu")
    _warm_up()
    _reset_peak()
    before = _memory()["VmRSS"]
    model = _build(config, "meta" if path == "meta" else "cpu")
    t0 = time.perf_counter()
    module = autopar.autoparallelize(model, plan.cluster, inputs, plan=plan)
    seconds = time.perf_counter() - t0
    mat = _memory()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4)
    loss = module(**inputs).loss
    loss.backward()
    optimizer.step()
    step = _memory()
    local = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return {"rank": rank, "before": before, "mat": mat["VmRSS"] - before, "peak": mat["VmHWM"] - before,
            "step": step["VmRSS"] - before, "local_bytes": local, "loss": loss.item(), "seconds": seconds}


def _plan(config: dict, world: int, budget: float | None):
    import autopar

    model = _build(config, "meta")
    cluster = autopar.ClusterInfo.preset(f"cpu:{world}")
    plan = autopar.plan(model, cluster, _inputs("meta"), memory_budget=budget, optimizer="sgd", checkpoint="none")
    params = list(model.parameters())
    return plan, {"params": sum(p.numel() for p in params), "full_bytes": sum(p.numel() * 4 for p in params),
                  "largest": max(p.numel() * 4 for p in params), "shards": plan.timeline.series["params"][0],
                  "plan_peak": plan.peak_memory}


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_config(label: str, config: dict, paths: list[str], world: int, budget: float | None) -> list[dict]:
    from tests.distributed import run_distributed

    plan, figures = _plan(config, world, budget)
    rows = []
    for path in paths:
        ranks = run_distributed(_run_rank, world, config, plan, path, timeout=1800)
        for r in ranks:
            bound = 1.25 * figures["shards"] + figures["largest"]
            row = {"config": label, "path": path, **figures, **r, "bound": bound, "ok": r["peak"] <= bound}
            rows.append(row)
            print(_table_line(row), flush=True)
    return rows


def _g(x: float) -> str:
    return f"{x / GIB:.2f}"


COLUMNS = [  # (header, width, cell)
    ("config", -9, lambda r: r["config"]), ("path", -4, lambda r: r["path"]), ("rank", 4, lambda r: r["rank"]),
    ("shards", 6, lambda r: _g(r["shards"])), ("largest", 7, lambda r: _g(r["largest"])),
    ("bound", 6, lambda r: _g(r["bound"])), ("before", 6, lambda r: _g(r["before"])),
    ("+mat", 6, lambda r: _g(r["mat"])), ("+peak", 6, lambda r: _g(r["peak"])), ("+step", 6, lambda r: _g(r["step"])),
    ("plan pk", 7, lambda r: _g(r["plan_peak"])), ("<=bound", 7, lambda r: "yes" if r["ok"] else "no"),
    ("mat s", 6, lambda r: f"{r['seconds']:.1f}"),
]


def _table_line(row: dict | None = None) -> str:
    """The table's header (no row) or one of its rows."""
    cells = [header if row is None else str(cell(row)) for header, _w, cell in COLUMNS]
    return " ".join(c.ljust(-w) if w < 0 else c.rjust(w) for c, (_h, w, _c) in zip(cells, COLUMNS))


def main() -> None:
    from autopar.errors import InfeasibleBudgetError

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/materialise.json")
    parser.add_argument("--layers", type=int, default=22, help="layers of the ~1B config")
    parser.add_argument("--budget", type=float, default=3.0, help="GiB per rank the plan must fit")
    parser.add_argument("--old", choices=("auto", "yes", "no"), default="auto", help="run the full-model path")
    parser.add_argument("--old-layers", type=int, default=4, help="layers of the config both paths run when the "
                                                                  "full-model path does not fit this machine")
    parser.add_argument("--world", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    sys.path.insert(0, os.getcwd())
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {_available() / GIB:.1f} GiB available")
    print(_table_line())
    big = dict(LLAMA_1B, num_hidden_layers=args.layers)
    full_bytes = _full_bytes(big)
    # the old path holds on every rank the full model, its shards and their gradients (~1.5 x the model)
    old_fits = _available() > 1.2 * args.world * 1.5 * full_bytes
    rows, notes = [], []
    budget = args.budget * GIB
    if args.old == "yes" or (args.old == "auto" and old_fits):
        rows += run_config(f"1b-{args.layers}L", big, ["meta", "full"], args.world, budget)
    else:
        rows += run_config(f"1b-{args.layers}L", big, ["meta"], args.world, budget)
        notes.append(f"full-model path not run at {args.layers} layers: {args.world} ranks x {_g(full_bytes)} GiB of "
                     f"weights (plus shards and gradients) exceed the {_g(_available())} GiB available; run on "
                     f"{args.old_layers} layers instead")
        small = dict(LLAMA_1B, num_hidden_layers=args.old_layers)
        scaled = budget * _full_bytes(small) / full_bytes  # the same budget relative to the model
        rows += run_config(f"1b-{args.old_layers}L", small, ["meta", "full"], args.world, scaled)
    try:  # the 7B config at the smallest budget that fits: its weights as sharded as the plan can make them
        seven, figures = _plan(LLAMA_7B, args.world, None)
    except InfeasibleBudgetError as exc:
        seven, figures = _plan(LLAMA_7B, args.world, 1.05 * exc.min_budget)
    planned = {"config": "7b", "world": args.world, **figures, "status": seven.status}
    print(f"7b on {args.world} ranks (planned on meta): {figures['params'] / 1e9:.2f}B parameters, "
          f"{_g(figures['full_bytes'])} GiB in full; each rank would hold {_g(figures['shards'])} GiB of shards "
          f"(largest parameter {_g(figures['largest'])} GiB), predicted peak {_g(figures['plan_peak'])} GiB")
    for note in notes:
        print("note:", note)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"load_average": load, "rows": rows, "planned_7b": planned, "notes": notes}, f, indent=1)
    print(f"wrote {args.out}")


def _full_bytes(config: dict) -> int:
    model = _build(config, "meta")
    return sum(p.numel() * 4 for p in model.parameters())


if __name__ == "__main__":
    main()
