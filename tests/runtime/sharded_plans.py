"""Plans that shard the weights of a tiny zoo model, made once in the test's parent process.

The fastest plan of a tiny model is plain data parallelism (every weight replicated), which would let
a materialisation or checkpoint test pass without cutting anything. A budget of ``fraction`` of that
plan's peak makes the planner shard; planning it once here (not on every rank of every world) keeps
one solver at a time on the machine. Workers pass the plan: ``autoparallelize(..., plan=plan)``.
"""
from __future__ import annotations

import functools

import autopar
from autopar import zoo

FRACTION = 0.85  # of the fastest plan's peak: the tiny GPT-2 and Llama shard on (2,), (4,) and (2, 2)


@functools.cache
def sharded_plan(name: str, mesh: str, fraction: float = FRACTION) -> autopar.Plan:
    """The plan of zoo model ``name`` (tiny, its zoo inputs) on preset ``mesh`` at ``fraction`` of the
    fastest plan's peak; asserts that it shards some parameter."""
    model, inputs = zoo.build(name, "tiny", device="meta")
    real = zoo.build(name, "tiny", device="cpu")[1]
    cluster = autopar.ClusterInfo.preset(mesh)
    fastest = autopar.plan(model, cluster, real, time_limit=20)
    plan = autopar.plan(model, cluster, real, memory_budget=fraction * fastest.peak_memory, time_limit=20)
    assert any(row.op == "param" and not row.strategy.output.is_replicated() for row in plan.rows), \
        f"{name} on {mesh}: the plan at {fraction} of the fastest peak shards nothing"
    return plan
