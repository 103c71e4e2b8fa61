"""The planner prices offload (solver/offload.py): a share of the parameters and optimizer state on the host
leaves device memory and costs host-link time; offload="auto" weighs the shares and keeps the fastest plan
that fits, and a budget nothing fits states the smallest budget counting offload.

GPT-2 tiny with two rows of its batch (one a rank on 2 devices), so model state, not activations, is what a
budget squeezes; chunks of 64 KiB (the default 25 MiB would make the whole model one chunk, which offload
cannot split: the planner then rightly finds that offloading parameters saves nothing).
"""
from __future__ import annotations

import json

import pytest
import torch

import autopar
from autopar import zoo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.solver.offload import AUTO_SHARES, HostShare

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def gpt2():
    model, inputs = zoo.build("gpt2", "tiny", device="meta", seed=0)
    return model, {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def plan(gpt2, cluster="cpu:2", **options):
    model, inputs = gpt2
    return autopar.plan(model, autopar.ClusterInfo.preset(cluster), inputs, bucket_bytes=CHUNK, **options)


def smallest(gpt2, **options) -> float:
    with pytest.raises(InfeasibleBudgetError) as err:
        plan(gpt2, memory_budget=1e3, **options)
    return err.value.min_budget


def test_a_budget_only_offload_meets_is_planned_with_offload_and_its_transfers(gpt2):
    no_offload = smallest(gpt2)  # sharding and activation checkpointing (checkpoint=None)
    with_offload = smallest(gpt2, offload="auto")
    assert with_offload < 0.7 * no_offload
    budget = (no_offload + with_offload) / 2
    with pytest.raises(InfeasibleBudgetError):
        plan(gpt2, memory_budget=budget)
    chosen = plan(gpt2, memory_budget=budget, offload="auto")
    off = chosen.offload
    assert off is not None and off.policy == "auto" and off.optimizer > 0
    assert chosen.peak_memory <= budget
    assert 0 < off.h2d < off.d2h and off.transfer_time > 0 and off.host_step_time > 0
    assert chosen.step_time == pytest.approx(chosen.sharding.step_time + off.time)
    assert chosen.memory.optimizer < (1 - off.optimizer) * 4 * chosen.memory.params + 1  # the state left the device
    text = chosen.report()
    assert "host->device" in text and "(incl." in text and "offload (auto) weighed" in chosen.notes[-1]
    assert "no offload: does not fit" in chosen.notes[-1] and "chosen" in chosen.notes[-1]
    again = autopar.Plan.from_json(json.loads(json.dumps(chosen.to_json())))
    assert again.offload == off and again.step_time == chosen.step_time


def test_the_smallest_budget_counts_offload_and_plans_again(gpt2):
    least = smallest(gpt2, offload="auto", checkpoint="none")
    at_least = plan(gpt2, memory_budget=least, offload="auto", checkpoint="none")
    assert at_least.offload is not None and at_least.peak_memory <= least
    assert (at_least.offload.params, at_least.offload.optimizer) == (1.0, 1.0)  # the least memory: all on the host
    with pytest.raises(InfeasibleBudgetError, match="counting offload") as err:
        plan(gpt2, memory_budget=0.97 * least, offload="auto", checkpoint="none")
    assert err.value.min_budget == least and "allow activation checkpointing" in str(err.value)


def test_a_roomy_budget_offloads_nothing(gpt2):
    roomy = plan(gpt2, offload="auto")  # the device's memory
    assert roomy.offload is None and "no offload: chosen" in roomy.notes[-1]
    assert roomy.step_time == plan(gpt2).step_time


def test_a_static_share_is_priced_as_given(gpt2):
    base = plan(gpt2, "cpu:1")
    half = plan(gpt2, "cpu:1", offload={"params": 0.5, "optimizer": 1.0})
    off = half.offload
    assert (off.params, off.optimizer, off.policy) == (0.5, 1.0, "static")
    assert half.options.offload == {"params": 0.5, "optimizer": 1.0}
    # on one device nothing is sharded: the device keeps half the parameters plus the chunks an op fetches
    assert half.memory.optimizer == 0
    assert half.timeline.breakdown(0)["params"] == pytest.approx(0.5 * base.memory.params + off.working_params)
    params, grads = base.memory.params, max(base.timeline.series["grads"])  # all the gradients: at backward's end
    # every parameter crosses at least (1 + 1) x 0.5 + |0.5 - 1| = 1.5 times each way; the gradients go down
    assert off.h2d >= 1.5 * params and off.d2h == pytest.approx(off.h2d + grads)
    with pytest.raises(AutoparError, match="does not compose with activation checkpointing"):
        plan(gpt2, "cpu:1", offload={"params": 0.5}, checkpoint="auto")


def test_a_larger_share_is_never_faster(gpt2):
    """What offload="auto" stops on: every share's fastest plan is no faster than a smaller share's."""
    from autopar.solver.planner import INF, Planner
    from autopar.tracer import trace

    model, inputs = gpt2
    cluster = autopar.ClusterInfo.preset("cpu:2")
    gm = trace(model, inputs)
    base = Planner(gm, cluster, autopar.PlanOptions.of(bucket_bytes=CHUNK))
    times = []
    for share in [HostShare(0.0, 0.0), *(HostShare(*s) for s in AUTO_SHARES)]:
        here = base.at_share(share)
        fastest = here.solve(INF)
        times.append(fastest.step_time + here.host_time(fastest))
    assert times == sorted(times) and times[-1] > times[0]
