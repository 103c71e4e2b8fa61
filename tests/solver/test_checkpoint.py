"""Stage 2 on traced models: the bytes a schedule keeps for backward are those autograd keeps."""
from __future__ import annotations

import pytest

from autopar import ClusterInfo
from autopar.runtime.checkpoint_regions import wrap_traced
from autopar.runtime.saved_probe import SavedTensorsProbe
from autopar.solver.build import build_strategies
from autopar.solver.checkpoint import as_plan, chain_of
from autopar.solver.checkpoint_dp import chen_schedule, min_peak, no_checkpoint, plan_chain
from autopar.solver.ilp import solve
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
    solve(build_strategies(gm, CPU1), CPU1)
    stages, chain = chain_of(gm, CPU1.mesh_shape)
    none, chen, lowest = no_checkpoint(chain), chen_schedule(chain), min_peak(chain)
    assert plan_chain(chain, chen.peak).extra_time <= chen.extra_time
    schedules = [none, chen] + [plan_chain(chain, lowest + f * (none.peak - lowest)) for f in (0.0, 0.3, 0.7)]
    for schedule in schedules:
        plan = as_plan(stages, chain, schedule, schedule.peak)
        measured = _kept(wrap_traced(gm, plan.regions), inputs)
        assert abs(plan.kept - measured) <= 0.1 * measured, f"{name} {schedule}: {plan.kept} vs {measured}"
    # on one device the chain holds, without recomputation, what the ILP's profiles sum to
    assert none.retained == sum(n.meta["profile"].saved_bytes for n in gm.graph.nodes)
