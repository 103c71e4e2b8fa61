"""Stage 2 on traced models: the bytes a schedule keeps for backward are those autograd keeps."""
from __future__ import annotations

import pytest

from autopar import ClusterInfo
from autopar.options import PlanOptions
from autopar.runtime.checkpoint_regions import wrap_traced
from autopar.runtime.saved_probe import SavedTensorsProbe
from autopar.solver.checkpoint import as_plan
from autopar.solver.checkpoint_dp import chen_schedule, min_peak, no_checkpoint, plan_chain
from autopar.solver.planner import INF, Planner
from autopar.tracer import trace

CPU1 = ClusterInfo.preset("cpu:1")


def _kept(gm, inputs) -> int:
    with SavedTensorsProbe(gm) as probe:
        out = gm(**inputs)
    held = probe.nbytes()
    del out
    return held


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_every_schedule_keeps_the_bytes_it_predicts(name):
    from autopar import zoo

    model, inputs = zoo.build(name, "tiny", device="cpu", seed=0)
    inputs["labels"] = inputs["labels"].clone()  # two inputs, two storages, as the graph has them
    gm = trace(model, inputs)
    planner = Planner(gm, CPU1, PlanOptions())
    sharding = planner.solve(INF)
    stages, chain = planner.chain(sharding)
    none, chen, lowest = no_checkpoint(chain), chen_schedule(chain), min_peak(chain)
    assert plan_chain(chain, chen.peak).extra_time <= chen.extra_time
    schedules = [none, chen] + [plan_chain(chain, lowest + f * (none.peak - lowest)) for f in (0.0, 0.3, 0.7)]
    for schedule in schedules:
        plan = as_plan(stages, chain, schedule, schedule.peak)
        measured = _kept(wrap_traced(gm, plan.regions), inputs)
        timeline = planner.timeline(sharding, plan.regions)
        assert timeline.kept() == measured, f"{name} {schedule}: timeline {timeline.kept()}, autograd {measured}"
        assert abs(plan.kept - measured) <= 0.1 * measured, f"{name} {schedule}: {plan.kept} vs {measured}"
        assert timeline.peak <= schedule.peak * (1 + 1e-9), f"{name} {schedule}: the chain is not conservative"
    # on one device the timeline holds, without recomputation, what the tracer's profiles sum to, and its
    # peak is the chain's (the chain adds each stage's background to the saved bytes before it)
    assert planner.timeline(sharding).kept() == sum(n.meta["profile"].saved_bytes for n in gm.graph.nodes)
    assert planner.timeline(sharding).peak == pytest.approx(none.peak, rel=1e-6)
