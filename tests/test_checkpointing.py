"""Tier 2: a budget that needs activation checkpointing trains with the single-device numbers.

The budget is 5 % above the smallest one that fits with checkpointing (what the error at a budget
of one byte states), where no sharding plan fits alone, so recomputation is required. On every
rank the bytes held for backward (``SavedTensorsProbe``: what autograd saved plus the checkpoint
regions' inputs), with everything else the Timeline holds at the end of forward, fit the budget,
and are within 10 % of what the plan predicts (``CheckpointPlan.kept``). The plan
``autoparallelize`` runs is the one ``autopar.plan`` returns for the same options; saved, loaded
and applied with ``plan=`` it runs the same code with the same numbers, and a plan for other
inputs, another cluster or other options is refused, naming the difference.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tests.distributed import run_distributed
from tests.test_autoparallelize import train_and_compare


def _budget_needing_checkpoints(name: str, cluster) -> float:
    import autopar
    from autopar import zoo
    from autopar.errors import InfeasibleBudgetError

    model, inputs = zoo.build(name, "tiny", device="meta")
    with pytest.raises(InfeasibleBudgetError) as info:
        autopar.plan(model, cluster, inputs, memory_budget=1.0, time_limit=TIME_LIMIT)
    # 5 % above the smallest budget that fits with checkpointing
    return 1.05 * info.value.min_budget


def _plan_key(plan) -> tuple:
    return (tuple((r.name, str(r.strategy)) for r in plan.rows), plan.regions, plan.peak_memory, plan.step_time)


def _loss_and_grads(pm, inputs):
    loss = pm(**inputs).loss
    loss.backward()
    grads = pm.full_grads()
    pm.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _saved_plan_runs_the_same(name, pm, model, inputs, cluster, tmp: str) -> None:
    """Save -> load -> autoparallelize(plan=...): the same loss and gradients; a mismatched plan is refused."""
    import autopar
    from autopar.solver.full_plan import PlanMismatchError

    pm.plan.save(tmp)
    loaded = autopar.load_plan(tmp)
    assert _plan_key(loaded) == _plan_key(pm.plan)
    again = autopar.autoparallelize(model, cluster, inputs, plan=loaded)
    assert again.code == pm.code
    (loss, grads), (loss2, grads2) = _loss_and_grads(pm, inputs), _loss_and_grads(again, inputs)
    assert torch.equal(loss, loss2), f"{name}: {loss} vs {loss2} from the loaded plan"
    for key, grad in grads.items():
        assert torch.equal(grad, grads2[key]), f"{name}: gradient of {key} differs with the loaded plan"
    wider = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with pytest.raises(PlanMismatchError, match="input 'input_ids' has shape"):
        autopar.autoparallelize(model, cluster, wider, plan=loaded)
    with pytest.raises(PlanMismatchError, match="mesh_shape"):
        autopar.autoparallelize(model, autopar.ClusterInfo.preset("cpu:4"), inputs, plan=loaded)
    with pytest.raises(PlanMismatchError, match="memory_budget"):
        autopar.autoparallelize(model, cluster, inputs, plan=loaded, memory_budget=2 * loaded.memory_budget)


TIME_LIMIT = 600  # seconds per ILP solve: a solve stopped by its limit may return another plan on a busy machine
REPLANNED = "gpt2"  # autoparallelize plans this model itself (and must find autopar.plan's plan); the rest get plan=


def check_checkpointed(rank: int, world_size: int, budgets: dict[str, float], plans: dict, tmp: str) -> list[dict]:
    import autopar
    from autopar import zoo
    from autopar.runtime.saved_probe import SavedTensorsProbe

    results = []
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    for name, budget in budgets.items():
        model, inputs = zoo.build(name, "tiny", device="cpu", seed=0)
        ref, other = copy.deepcopy(model), copy.deepcopy(model)
        if name == REPLANNED:  # the plan autoparallelize makes is the one autopar.plan shows, with the same options
            pm = autopar.autoparallelize(model, cluster, inputs, memory_budget=budget, time_limit=TIME_LIMIT)
            assert _plan_key(pm.plan) == _plan_key(plans[name])
        else:  # the parent's plan, not solved again (a tight 2x2 budget is a slow ILP)
            pm = autopar.autoparallelize(model, cluster, inputs, plan=plans[name])
        _saved_plan_runs_the_same(name, pm, other, inputs, cluster, f"{tmp}/{name}-{rank}.json")
        stage2 = pm.checkpoint_plan
        assert stage2 is not None and stage2.regions, f"{name}: the budget needs checkpointing"
        assert "torch.utils.checkpoint.checkpoint" in pm.code
        with SavedTensorsProbe(pm) as probe:
            loss = pm(**inputs).loss
        held = probe.nbytes()
        del loss  # no backward: the graph and what it saved go
        timeline = pm.plan.timeline
        end = max(i for i, p in enumerate(timeline.phase) if p == "forward")
        at_end = float(timeline.totals()[end]) - timeline.kept() + held  # the device at the end of forward, measured
        assert at_end <= pm.plan.memory_budget, f"{name} rank {rank}: {held} bytes held for backward, over budget"
        assert abs(held - stage2.kept) <= 0.1 * held, f"{name} rank {rank}: {held} held, {stage2.kept:.0f} predicted"
        assert pm.plan.peak_memory <= budget
        train_and_compare(ref, pm, inputs, f"{name} checkpointed on 2x2")
        results.append({"model": name, "regions": len(stage2.regions), "report": stage2.report(),
                        "held": held, "kept": stage2.kept, "budget": stage2.budget})
    return results


def test_checkpointed_plans_train_identically_within_budget(tmp_path):
    import autopar
    import autopar.zoo as zoo

    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    budgets = {n: _budget_needing_checkpoints(n, cluster) for n in ("gpt2", "llama") if n in zoo.names()}
    # the plan autopar.plan shows (planned here, without a process group) is the one autoparallelize runs
    plans = {}
    for name, budget in budgets.items():
        model, inputs = zoo.build(name, "tiny", device="meta")
        plans[name] = autopar.plan(model, cluster, inputs, memory_budget=budget, time_limit=TIME_LIMIT)
    results = run_distributed(check_checkpointed, 4, budgets, plans, str(tmp_path), timeout=900)
    assert [r["model"] for r in results[0]] == list(budgets)
