"""Merging trivial ops and sharing repeated layers keeps the optimum; time limits and banners."""
from __future__ import annotations

import pytest
import torch

from autopar import ClusterInfo
from autopar.solver import ilp as ilp_module
from autopar.solver.build import build_strategies
from autopar.solver.ilp import solve
from autopar.solver.memory import MemoryModel
from autopar.solver.memory_rows import interior_steps
from autopar.solver.merge import reduce
from autopar.tracer import trace

CPU2x2 = ClusterInfo.preset("cpu:2x2")


def _gpt2(n_layer: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=n_layer, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    ids = torch.empty(4, 16, dtype=torch.long, device="meta")
    return trace(model, {"input_ids": ids, "labels": ids, "use_cache": False})


def test_reduction_merges_views_and_ties_layers(gpt2_gm):
    sg = build_strategies(gpt2_gm, CPU2x2)
    red = reduce(sg)
    # 29 trivial ops follow their producer (views, and pointwise ops proven never dearer to follow)
    assert red.repeats == 2 and red.tied > 10 and red.merged > 20
    for k in range(len(sg.nodes)):  # every node's strategies are reachable through its owner
        assert len(red.pick[k]) == (len(sg.nodes[red.owner[k]].meta["strategies"]) if red.owner[k] is not None else 1)
    views = [k for k, n in enumerate(sg.nodes) if n.meta.get("op") == "view" and red.owner[k] != k]
    assert views


@pytest.mark.parametrize("tight", [False, True])
def test_merged_and_shared_ilp_against_the_unmerged_optimum(gpt2_gm, tight):
    # An honest check on 2-layer GPT-2 tiny, with a generous budget and with one that binds.
    # Merging alone keeps the optimum in both. Sharing (both layers on one plan) keeps it when memory
    # does not bind; under a binding budget the unshared ILP may give the two layers different plans
    # (measured: 0.8% faster here), so there the shared optimum is only an upper bound, reported as such.
    sg = build_strategies(gpt2_gm, CPU2x2)
    # the unmerged ILP is the slow one (about 40 s under the binding budget on a quiet core): no time limit
    # it could hit on a loaded machine, so the reference is always a proven optimum
    free = solve(sg, CPU2x2, merge=False, share=False, time_limit=600)
    budget = None
    if tight:  # binds, yet loose enough that the unmerged ILP proves optimality quickly
        lower = MemoryModel(sg).bound(upper=False)
        budget = lower + 0.9 * (free.peak_memory - lower)
    full = solve(sg, CPU2x2, memory_budget=budget, merge=False, share=False, time_limit=600)
    merged = solve(sg, CPU2x2, memory_budget=budget, share=False)
    reduced = solve(sg, CPU2x2, memory_budget=budget)
    assert full.status == merged.status == reduced.status == "optimal"
    assert reduced.stats.variables < merged.stats.variables < full.stats.variables
    assert merged.step_time == pytest.approx(full.step_time, rel=1e-6)
    if tight:
        assert full.step_time * (1 - 1e-6) <= reduced.step_time <= full.step_time * 1.02
        assert reduced.peak_memory <= budget * (1 + 1e-9)
    else:
        assert reduced.step_time == pytest.approx(full.step_time, rel=1e-6)


def test_interior_layers_rows_are_implied_and_dropped():
    gm = _gpt2(6)
    sg = build_strategies(gm, CPU2x2)
    red, mm = reduce(sg), MemoryModel(sg)
    assert red.repeats == 6
    dropped = interior_steps(red, mm)
    assert dropped and min(dropped) >= red.starts[2] and max(dropped) < red.starts[4]
    lower = mm.bound(upper=False)
    free = solve(sg, CPU2x2)
    budget = lower + 0.8 * (free.peak_memory - lower)
    plan = solve(sg, CPU2x2, memory_budget=budget)
    assert plan.peak_memory <= budget * (1 + 1e-9)  # the full liveness check of the plan, every step


def test_time_limited_solve_is_not_presented_as_optimal(monkeypatch, gpt2_gm):
    sg = build_strategies(gpt2_gm, CPU2x2)
    real = ilp_module.run_solver

    def stopped_by_time_limit(prob, backend):
        real(prob, backend)
        return 2  # what prob.sol_status says when the time limit stops the search with a solution

    monkeypatch.setattr(ilp_module, "run_solver", stopped_by_time_limit)
    plan = solve(sg, CPU2x2, time_limit=0.5)
    assert plan.status == "feasible (time limit)" and plan.stats.sol_status == 2
    assert "feasible (time limit)" in plan.report() and "optimal" not in plan.report().splitlines()[1]


def test_solver_prints_no_banner(capfd, gpt2_gm):
    sg = build_strategies(gpt2_gm, CPU2x2)
    solve(sg, CPU2x2)
    out, _ = capfd.readouterr()
    assert "HiGHS" not in out and "Copyright" not in out
