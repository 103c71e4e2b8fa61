"""The memory model: liveness over forward and backward, optimizer state, the peak in the plan."""
from __future__ import annotations

import json

import pytest
import torch

from autopar import ClusterInfo
from autopar.solver.build import build_strategies
from autopar.solver.ilp import solve
from autopar.solver.memory import CATEGORIES, MemoryModel, state_factors
from autopar.solver.plan import choice_of
from tests.solver.conftest import traced_mlp

CPU4 = ClusterInfo.preset("cpu:4")


def test_state_factors_by_optimizer_and_dtype():
    assert state_factors(torch.float32, "adamw") == (4, 4, 8)  # param, grad, two fp32 moments
    assert state_factors(torch.float32, "sgd") == (4, 4, 0)
    assert state_factors(torch.float32, "sgd_momentum") == (4, 4, 4)
    assert state_factors(torch.bfloat16, "adamw") == (2, 2, 12)  # fp32 master copy + two fp32 moments
    with pytest.raises(ValueError, match="unknown optimizer"):
        state_factors(torch.float32, "lion")


def test_liveness_peak_between_parameter_state_and_plain_sum(gpt2_gm):
    sg = build_strategies(gpt2_gm, CPU4)
    plan = solve(sg, CPU4)
    mm = MemoryModel(sg)
    choice = choice_of(sg, plan)
    peak = mm.peak(choice)
    state = sum(mm.param[k][c] + mm.grad[k][c] + mm.opt[k][c] for k, c in enumerate(choice))
    plain = state + sum(mm.saved[k][c] + mm.out[k][c] for k, c in enumerate(choice))
    plain += sum(mat.max() for _, _, mat in mm.copies)
    assert state <= peak.peak <= plain
    assert peak.peak == pytest.approx(plan.peak_memory)
    assert sum(getattr(peak, c) for c in CATEGORIES) == pytest.approx(peak.peak)
    assert mm.bound(upper=False) <= peak.peak <= mm.bound(upper=True)


def test_optimizer_changes_the_state_not_the_activations():
    gm = traced_mlp(64, 512, loss=True)
    sg = build_strategies(gm, CPU4)
    adamw, sgd = solve(sg, CPU4), solve(sg, CPU4, optimizer="sgd")
    assert sgd.memory.optimizer == 0 < adamw.memory.optimizer
    assert sgd.peak_memory < adamw.peak_memory


def test_plan_json_records_the_breakdown_at_the_peak(tmp_path):
    plan = solve(build_strategies(traced_mlp(1024, 64, loss=True), CPU4), CPU4)
    data = json.loads(json.dumps(plan.to_json()))
    assert set(CATEGORIES) <= set(data["memory"]) and data["memory"]["step"].startswith(("forward", "backward"))
    assert data["peak_memory"] == pytest.approx(sum(data["memory"][c] for c in CATEGORIES))
    assert data["stats"]["sol_status"] == 1 and plan.stats.sol_status == 1
    text = plan.report()
    assert "peak at" in text and "optimizer" in text and "ILP:" in text


def test_a_resharded_parameter_its_consumer_saves_is_an_activation_until_that_backward():
    gm = traced_mlp(64, 512, loss=True)  # x needs no gradient: the first linear does not save its weight
    sg = build_strategies(gm, CPU4)
    mm = MemoryModel(sg)
    kept = {(sg.edges[e].src.name, mm.names[t]) for e, t, _ in mm.kept_copies}
    assert kept == {("fc2_weight", "linear_1")}  # it saves its weight to give its input a gradient
    e, t, mat = mm.kept_copies[0]
    edge = sg.edges[e]
    i, j = next((i, j) for i in range(len(edge.src_group)) for j in range(len(edge.dst_group))
                if mat[edge.src_group[i], edge.dst_group[j]] > 0)  # the weight stored one way, wanted another
    choice = [0] * len(mm.names)
    choice[mm.names.index(edge.src.name)], choice[t] = i, j
    acts = mm.profile(choice)["activations"]
    assert acts[t] - acts[t - 1] == pytest.approx(mm.saved[t][j] + mat[edge.src_group[i], edge.dst_group[j]])
