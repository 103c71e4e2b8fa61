"""What a user sees when the model or the launch does not fit: errors that say what to do, no crashes.

Planning checks need no process group. One spawned world of 2 gloo ranks runs the checks that
need one: a cluster of 4 on 2 ranks raises a LaunchError naming both numbers and how to launch;
the model with an op that has no rule, and the one with a hidden size of 7, run on 2 ranks with
the single-device numbers.
"""
from __future__ import annotations

import copy

import pytest
import torch

import autopar
from autopar.errors import AutoparError, InfeasibleBudgetError, LaunchError
from autopar.spec import ShardingSpec
from tests.distributed import run_distributed


class Flip(torch.nn.Module):
    """``torch.flip`` has no sharding rule: it must run replicated, and the plan must say where."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.flip(self.fc(x), dims=[1])  # the fallback's source line
        return y.pow(2).mean()


class Odd(torch.nn.Module):
    """Hidden size 7: no mesh axis of 2 or 4 devices divides it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(7, 7), torch.nn.Linear(7, 7)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).pow(2).mean()


def _model(cls):
    torch.manual_seed(0)
    return cls(), (torch.randn(8, 8 if cls is Flip else 7),)


def test_an_op_without_a_rule_runs_replicated_and_the_plan_lists_it_with_its_source_line():
    model, inputs = _model(Flip)
    plan = autopar.plan(model, autopar.ClusterInfo.preset("cpu:2"), inputs)
    assert [(f.name, f.op) for f in plan.fallbacks] == [("flip", "flip")]
    assert "test_errors.py" in plan.fallbacks[0].source and "torch.flip(self.fc(x)" in plan.fallbacks[0].source
    assert plan.strategy_of("flip").output.is_replicated()
    assert "1 op(s) without a sharding rule ran replicated" in plan.report()
    assert "%flip (flip) at " in plan.report()


def test_an_indivisible_hidden_size_is_planned_unsplit():
    model, inputs = _model(Odd)
    plan = autopar.plan(model, autopar.ClusterInfo.preset("cpu:4"), inputs)
    for row in plan.rows:
        if isinstance(row.shape, tuple) and all(isinstance(n, int) for n in row.shape):
            spec = row.strategy.output
            assert spec.fits(row.shape, (4,)), f"{row.name}: {spec} on {row.shape}"
            assert not any(spec.dims[d] for d, n in enumerate(row.shape) if n == 7), f"{row.name} splits 7: {spec}"


def test_local_shape_of_an_indivisible_shape_says_which_spec_shape_and_mesh():
    with pytest.raises(ValueError, match=r"spec S0R does not evenly shard shape \(7, 4\) on mesh \(4,\)"):
        ShardingSpec.parse("S0R").local_shape((7, 4), (4,))
    assert ShardingSpec.parse("S0R").local_shape((8, 4), (4,)) == (2, 4)


def test_an_infeasible_budget_states_the_smallest_budget_and_that_budget_plans():
    from autopar import zoo

    model, inputs = zoo.build("mlp", "tiny", device="cpu")
    cluster = autopar.ClusterInfo.preset("cpu:4")
    with pytest.raises(InfeasibleBudgetError, match=r"1000 B per device; the smallest budget that fits is") as info:
        autopar.plan(model, cluster, inputs, memory_budget=1000)
    err = info.value
    assert isinstance(err, AutoparError) and err.min_budget > 1000
    assert f"({err.min_budget:.0f} bytes)" in str(err) and "Raise memory_budget" in str(err)
    plan = autopar.plan(model, cluster, inputs, memory_budget=err.min_budget)
    assert plan.peak_memory <= err.min_budget


# ---- one world of 2 ranks --------------------------------------------------------------------------
def _same_numbers(model, inputs, cluster) -> None:
    ref = copy.deepcopy(model)
    pm = autopar.autoparallelize(model, cluster, inputs)
    loss, ref_loss = pm(*inputs), ref(*inputs)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    grads = pm.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def _world(rank: int, world_size: int) -> dict:
    model, inputs = _model(Odd)
    try:
        autopar.autoparallelize(model, autopar.ClusterInfo.preset("cpu:4"), inputs)
        mismatch = None
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        mismatch = (type(exc).__name__, isinstance(exc, LaunchError), isinstance(exc, AutoparError), str(exc))
    _same_numbers(*_model(Flip), autopar.ClusterInfo.preset("cpu:2"))
    _same_numbers(*_model(Odd), autopar.ClusterInfo.preset("cpu:2"))
    return {"mismatch": mismatch}


def test_world_size_mismatch_and_odd_models_on_two_ranks():
    results = run_distributed(_world, 2, timeout=300)
    for r in results:
        name, is_launch, is_autopar, text = r["mismatch"]
        assert is_launch and is_autopar, f"expected a LaunchError (an AutoparError), got {name}: {text}"
        assert "the process group has 2 ranks but the cluster's mesh 4 needs 4" in text
        assert "torchrun --nproc-per-node 4" in text and "cluster.with_mesh((2,))" in text
