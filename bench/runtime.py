"""autopar's runtime against the engines users would otherwise pick, on the same model, batch and gloo world.

    python bench/runtime.py [--out bench/out/runtime.json] [--steps 11] [--world 2] [--only dp,fsdp,tp]

Three pairs, each run alternately in one process per rank (A, B, B, A, ...; median step time over at
least ``--steps`` steps and 5 s of autopar's, after two warm-up steps of each; one thread per rank):

- ``dp``:   GPT-2 (4 layers, hidden 256, 4 heads, vocab 1024, seq 128, batch 8) under autopar's pure
            data-parallel plan (every weight replicated: a hand plan) against
            ``torch.nn.parallel.DistributedDataParallel``;
- ``fsdp``: the same GPT-2 under autopar's weight-sharded plan (every weight that can be split is
            stored split: a hand plan) against FSDP2 ``fully_shard`` (each block, then the root);
- ``tp``:   an MLP (hidden 1024, 4x, batch 16) under the plan autopar chooses (Megatron
            column-then-row) against torch's ``parallelize_module`` with ColwiseParallel/RowwiseParallel.

For GPT-2 autopar runs with ``outputs="loss"`` (DDP and FSDP2 return each rank's own logits; the
default ``"all"`` would gather the whole batch's). A step is forward, backward and AdamW. Per
engine: step time (median, ms) and autopar's ratio to the other engine; collectives and bytes per
step (counted by wrapping torch.distributed's collectives); for autopar, the plan's predicted
communication time against the measured one (at least nine separate steps and 3 s, every collective timed to
its completion; each collective's median, summed), with the preset's alpha/beta and with
``ClusterInfo.profile()``'s; peak RSS per rank. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLLECTIVES = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather_single",
               "reduce_scatter_single", "all_to_all_single", "broadcast", "all_gather", "reduce_scatter",
               "_all_gather_base", "_reduce_scatter_base")


class CommCount:
    """Collectives in a block, for any engine (torch.distributed's python functions, functional
    collectives, DTensor): the profiler's ``gloo:``/``nccl:`` events; and the bytes of those called
    through torch.distributed's python functions (autopar's: the profiler does not see a tensor list's)."""

    def __enter__(self):
        import torch
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.__enter__()
        self.bytes, self._real = 0, {}
        import torch.distributed as dist

        for name in COLLECTIVES:
            real = getattr(dist, name, None)
            if real is None:
                continue
            self._real[name] = real

            def wrapped(*args, _real=real, **kwargs):
                self.bytes += max((a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)),
                                  default=0)
                return _real(*args, **kwargs)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, real in self._real.items():
            setattr(dist, name, real)
        self.prof.__exit__(*exc)
        self.calls = sum(1 for e in self.prof.events() if e.name.startswith(("gloo:", "nccl:")))


class CommTimer:
    """Seconds autopar spends in collectives in a block: every torch.distributed collective it calls is
    preceded by a barrier of its group (so waiting for a late rank is not counted) and waited for."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.calls, self._real = dist, [], {}

    def __enter__(self):
        for name in COLLECTIVES:
            real = getattr(self.dist, name, None)
            if real is None:
                continue
            self._real[name] = real

            def wrapped(*args, _real=real, **kwargs):
                self.dist.barrier(group=kwargs.get("group"))
                t0 = time.perf_counter()
                work = _real(*args, **kwargs)
                if work is not None and hasattr(work, "wait"):
                    work.wait()
                self.calls.append(time.perf_counter() - t0)
                return work

            setattr(self.dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, real in self._real.items():
            setattr(self.dist, name, real)


def _steps_for(seconds: float, module, opt, inputs) -> int:
    """How many steps fill ``seconds`` (at least nine), agreed by every rank (the slowest rank's step time)."""
    import torch
    import torch.distributed as dist

    t0 = time.perf_counter()
    _step(module, opt, inputs)
    took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return max(9, int(seconds / float(took)))


def typical_comm(steps: list[list[float]]) -> float:
    """Seconds of communication in a typical step: each collective's median over the steps, summed (on a loaded
    2-core machine one small collective now and then takes ms instead of a fraction of one, and a median of the
    steps' sums still carries such jumps)."""
    if len({len(s) for s in steps}) != 1:  # the steps issued different collectives: the median step
        return statistics.median(sum(s) for s in steps)
    return sum(statistics.median(times) for times in zip(*steps))


def _gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=1024, n_positions=128, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 1024, (8, 128))
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}


def _mlp():
    import torch

    from autopar.zoo import MLP

    torch.manual_seed(0)
    model = MLP(hidden=1024)
    return model, (torch.randn(16, 1024), torch.randn(16, 1024))


def _loss(model, inputs):
    out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
    return out if hasattr(out, "backward") else out.loss


def _step(model, opt, inputs) -> None:
    opt.zero_grad(set_to_none=True)
    _loss(model, inputs).backward()
    opt.step()


def _replicated_params(_node, strategy) -> bool:
    return _node.meta.get("op") != "param" or strategy.output.is_replicated()


def _split_params(node, strategy) -> bool:
    if node.meta.get("op") != "param":
        return True
    return not strategy.output.is_replicated() or all(s.output.is_replicated() for s in node.meta["strategies"])


def _autopar(model, inputs, cluster, allowed=None, **options):
    import autopar
    from autopar.options import PlanOptions
    from autopar.solver.planner import hand_plan
    from autopar.tracer import trace

    if allowed is None:
        return autopar.autoparallelize(model, cluster, inputs, **options)
    opts = PlanOptions.of(**options)
    plan = hand_plan(trace(model, inputs, outputs=opts.outputs), cluster, opts, allowed)
    return autopar.autoparallelize(model, cluster, inputs, plan=plan)


def _baseline(kind: str, model, world: int):
    import torch
    import torch.distributed as dist

    if kind == "dp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    assert dist.is_initialized()
    return parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})


def _local_inputs(kind: str, inputs, rank: int, world: int):
    """DDP takes this rank's slice of the batch; FSDP2 too; TP and autopar take the global batch."""
    if kind not in ("dp", "fsdp"):
        return inputs
    if isinstance(inputs, tuple):
        return tuple(t.chunk(world)[rank] for t in inputs)
    return {k: (v.chunk(world)[rank] if hasattr(v, "chunk") else v) for k, v in inputs.items()}


def run_pair(rank: int, world: int, kind: str, steps: int) -> dict:
    import torch

    import autopar

    torch.set_num_threads(1)
    model, inputs = _mlp() if kind == "tp" else _gpt2()
    cluster = autopar.ClusterInfo.preset(f"cpu:{world}")
    profiled = cluster.profile()
    allowed = {"dp": _replicated_params, "fsdp": _split_params, "tp": None}[kind]
    # GPT-2: only the loss, as DDP and FSDP2 return (their logits stay each rank's own; autopar's default
    # "all" would gather the whole batch's logits, a collective the others never make)
    outputs = "all" if kind == "tp" else "loss"
    ours = _autopar(copy.deepcopy(model), inputs, cluster, allowed, outputs=outputs)
    ours_profiled = _autopar(copy.deepcopy(model), inputs, profiled, allowed, outputs=outputs)
    theirs = _baseline(kind, copy.deepcopy(model), world)
    their_inputs = _local_inputs(kind, inputs, rank, world)
    engines = {"autopar": (ours, inputs), "torch": (theirs, their_inputs)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _i) in engines.items()}
    for _ in range(2):
        for k, (m, i) in engines.items():
            _step(m, opts[k], i)
    times = {k: [] for k in engines}
    # at least ``steps`` and 5 s of autopar's steps (a 30 ms step's median over 11 moves by 10 % between
    # two identical modules here); alternated A, B, B, A, ..., so load and whichever engine runs first after
    # the barrier hit both alike
    timed = max(steps, _steps_for(5.0, ours, opts["autopar"], inputs))
    for step in range(timed):
        for k, (m, i) in (list(engines.items()) if step % 2 == 0 else list(engines.items())[::-1]):
            torch.distributed.barrier()
            t0 = time.perf_counter()
            _step(m, opts[k], i)
            times[k].append(time.perf_counter() - t0)
    counts = {}
    for k, (m, i) in engines.items():
        with CommCount() as count:
            _step(m, opts[k], i)
        counts[k] = (count.calls, count.bytes)
    measured = {}
    for label, module in (("preset", ours), ("profiled", ours_profiled)):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        _step(module, opt, inputs)
        steps = []
        for _ in range(_steps_for(3.0, module, opt, inputs)):  # at least nine, and 3 s: small steps, more of them
            with CommTimer() as timer:
                _step(module, opt, inputs)
            steps.append(timer.calls)
        measured[label] = (module.plan.sharding.comm_time, typical_comm(steps))
    chunks = len(ours._grad_sync.chunks)
    return {"kind": kind, "step_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}, "steps": timed,
            "collectives": counts, "comm": measured, "chunks": chunks,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "plan": [str(r.strategy) for r in ours.plan.rows if r.op == "param"][:4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out/runtime.json")
    parser.add_argument("--steps", type=int, default=11)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--only", default="dp,fsdp,tp")
    args = parser.parse_args()
    from tests.distributed import run_distributed

    rows = []
    load = os.getloadavg()
    print(f"{'pair':<5} {'autopar ms':>10} {'torch ms':>9} {'ratio':>6} {'colls a/t':>10} {'MiB a/t':>11} "
          f"{'chunks':>6} {'comm pred/meas (preset)':>24} {'(profiled)':>16} {'RSS MiB':>8}")
    for kind in args.only.split(","):
        per_rank = run_distributed(run_pair, args.world, kind, args.steps, timeout=1800)
        r = per_rank[0]
        a, t = r["step_ms"]["autopar"], r["step_ms"]["torch"]
        (ca, ba), (ct, bt) = r["collectives"]["autopar"], r["collectives"]["torch"]
        (pp, mp), (pq, mq) = r["comm"]["preset"], r["comm"]["profiled"]
        row = {**r, "ratio": a / t, "rss_mib_per_rank": [x["rss_mib"] for x in per_rank]}
        rows.append(row)
        print(f"{kind:<5} {a:>10.1f} {t:>9.1f} {a / t:>6.2f} {ca:>4}/{ct:<5} {ba / 2**20:>5.1f}/{bt / 2**20:<5.1f} "
              f"{r['chunks']:>6} {pp * 1e3:>10.2f}/{mp * 1e3:<8.2f} ms {pq * 1e3:>7.2f}/{mq * 1e3:<6.2f} ms "
              f"{max(row['rss_mib_per_rank']):>8.0f}", flush=True)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"world": args.world, "steps": args.steps, "load": load, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
