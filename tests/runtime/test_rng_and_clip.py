"""Randomness follows the data's layout (runtime/rng.py) and clip_grad_norm_ gives the single-device norm."""
from __future__ import annotations

import copy

import torch

from tests.distributed import run_distributed


def _dropout_gpt2(p: float = 0.1):
    from autopar import zoo

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    model.train()
    return model, inputs


def _restricted_plan(model, inputs, cluster, allowed):
    """The Plan of a hand-restricted sharding (no process group): every strategy passes ``allowed``."""
    from autopar.options import PlanOptions
    from autopar.solver.planner import hand_plan
    from autopar.tracer import trace

    return hand_plan(trace(model, inputs), cluster, PlanOptions(), allowed)


def check_masks(rank: int, world_size: int) -> dict:
    import autopar

    cluster = autopar.ClusterInfo.preset("cpu:2x2")

    def axis0_only(_node, strategy):  # split on mesh axis 0 only: replicas across axis 1
        return all(1 not in s.used_axes() for s in (strategy.output, *strategy.inputs) if s is not None)

    model, inputs = _dropout_gpt2()
    plan = _restricted_plan(copy.deepcopy(model), inputs, cluster, axis0_only)
    losses, masks = [], {}
    for run in range(2):  # two modules built with the same seed: identical losses
        pm = autopar.autoparallelize(copy.deepcopy(model), cluster, inputs, plan=plan)
        def record(mod, _args, out, name, run=run):
            masks[(run, name)] = (mod.shard, (out == 0).flatten().tolist())

        hooks = [m.register_forward_hook(lambda mod, a, out, name=name: record(mod, a, out, name))
                 for name, m in pm.named_modules() if name.startswith("rng_")]
        losses.append(pm(**inputs).loss.item())
        for h in hooks:
            h.remove()
    again = autopar.autoparallelize(copy.deepcopy(model), cluster, inputs, plan=plan)
    first, second = again(**inputs).loss.item(), again(**inputs).loss.item()
    return {"losses": losses, "masks": {name: v for (run, name), v in masks.items() if run == 0},
            "steps_differ": first != second}


def test_replicas_draw_the_same_mask_and_shards_their_own():
    results = run_distributed(check_masks, 4, timeout=300)
    for r in results:
        assert r["losses"][0] == r["losses"][1], "two runs with the same seed must give the same loss"
        assert r["steps_differ"], "each step draws new masks"
    names = results[0]["masks"].keys()
    assert names, "the dropout ops run under their own seeds"
    replicas = shards = 0
    for name in names:
        by_rank = [r["masks"][name] for r in results]
        for i in range(4):
            for j in range(i + 1, 4):
                (si, mi), (sj, mj) = by_rank[i], by_rank[j]
                if si == sj:
                    assert mi == mj, f"{name}: ranks {i} and {j} hold the same piece but drew different masks"
                    replicas += 1
                elif len(mi) == len(mj) and len(mi) > 32:
                    assert mi != mj, f"{name}: ranks {i} and {j} hold different pieces but drew the same mask"
                    shards += 1
    assert replicas and shards, (replicas, shards)


def _mixed_budget(name: str, size: str, mesh: tuple) -> float:
    """A budget whose plan splits some weights and keeps others replicated (between the smallest and the
    unconstrained plan's peak); found here, in the parent, once (not by every rank)."""
    import autopar
    from autopar import zoo
    from autopar.errors import InfeasibleBudgetError

    model, inputs = zoo.build(name, size, device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:" + "x".join(map(str, mesh)))

    try:
        autopar.plan(model, cluster, inputs, memory_budget=1.0)
    except InfeasibleBudgetError as err:
        smallest = err.min_budget
    free = autopar.plan(model, cluster, inputs, memory_budget=float("inf")).peak_memory
    for f in (0.5, 0.3, 0.7, 0.15, 0.85):
        budget = smallest + f * (free - smallest)
        specs = [r.strategy.output for r in autopar.plan(model, cluster, inputs, memory_budget=budget).rows
                 if r.op == "param"]
        if any(s.is_replicated() for s in specs) and any(not s.is_replicated() for s in specs):
            return budget
    raise AssertionError("no budget gives a plan with both sharded and replicated weights")


def check_clip(rank: int, world_size: int, cases, mixed) -> list[float]:
    import autopar
    from autopar import zoo

    norms = []
    for name, size, mesh, fraction in cases:
        model, inputs = zoo.build(name, size, device="cpu", seed=0)
        cluster = autopar.ClusterInfo.preset("cpu:" + "x".join(map(str, mesh)))
        if isinstance(fraction, str):  # "mixed": the budget the parent found
            budget, checkpoint = mixed[name, size, mesh], None
        else:  # the budgets tests/test_autoparallelize.py knows to shard weights (stage 1 alone: fast ILPs)
            budget, checkpoint = fraction * autopar.plan(model, cluster, inputs).peak_memory, "none"
        ref = copy.deepcopy(model)
        pm = autopar.autoparallelize(model, cluster, inputs, memory_budget=budget, checkpoint=checkpoint)
        specs = [pm.param_spec(n) for n in pm.full_state_dict()]
        assert any(s.is_replicated() for s in specs) and any(not s.is_replicated() for s in specs), mesh
        loss = pm(*inputs) if isinstance(inputs, tuple) else pm(**inputs).loss
        loss.backward()
        (ref(*inputs) if isinstance(inputs, tuple) else ref(**inputs).loss).backward()
        for max_norm in (1e9, 0.05):  # no clipping, then clipping
            got = pm.clip_grad_norm_(max_norm)
            want = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=0, msg=lambda m, mesh=mesh: f"{mesh}: {m}")
        grads = pm.full_grads()
        for pname, p in ref.named_parameters():
            torch.testing.assert_close(grads[pname], p.grad, rtol=1e-4, atol=1e-6)
        norms.append(float(got))
    return norms


def test_clip_grad_norm_is_the_single_device_norm():
    mixed = {("gpt2", "tiny", (2,)): _mixed_budget("gpt2", "tiny", (2,))}
    assert run_distributed(check_clip, 2, [("gpt2", "tiny", (2,), "mixed")], mixed, timeout=300)
    assert run_distributed(check_clip, 4, [("mlp", "small", (4,), 0.9), ("gpt2", "tiny", (2, 2), 0.8)], mixed,
                           timeout=400)
