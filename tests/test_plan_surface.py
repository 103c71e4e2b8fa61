"""One planning surface: ``autopar.plan`` returns the Plan that will run, with checkpointing, and it saves,
loads and refuses what it was not made for. (Tier 1: no process group; ``test_checkpointing.py`` runs the
same plans on a 2x2 gloo mesh.)"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import pathlib
import re

import pytest
import torch

import autopar
from autopar import zoo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.options import PlanOptions
from autopar.solver.full_plan import PlanMismatchError
from autopar.tracer import trace

INF = float("inf")


def _gpt2_small(batch: int = 32, seq: int = 1024):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}


def test_gpt2_small_plans_under_every_budget_with_checkpointing():
    model, inputs = _gpt2_small()
    cluster = autopar.ClusterInfo.preset("8xH100")
    free = autopar.plan(model, cluster, inputs, memory_budget=INF)
    assert not free.regions
    smallest = None
    for f in (1.0, 0.6, 0.4, 0.25):
        budget = f * free.peak_memory
        try:
            plan = autopar.plan(model, cluster, inputs, memory_budget=budget, checkpoint="auto")
        except InfeasibleBudgetError as err:
            assert f < 0.4, f"{f}: {err}"
            assert "with activation checkpointing" in str(err) and err.min_budget > budget
            smallest = err.min_budget
            continue
        assert plan.peak_memory <= budget, f
        if f < 1.0:
            assert plan.regions and "ckpt_0" in plan.report(), f
            assert plan.step_time > plan.sharding.step_time  # recomputation is priced
    assert smallest is not None, "a quarter of the unconstrained peak should need more than checkpointing"
    again = autopar.plan(model, cluster, inputs, memory_budget=smallest, checkpoint="auto")
    assert again.peak_memory <= smallest


# tiny zoo models on a mesh of 2 CPU "devices" (tight budgets make the ILP of a 2x2 mesh slow: 30 s a solve)
TINY = ["gpt2", "llama", "mistral", "qwen2", "opt", "gpt_neox", "bert", "t5", "bart", "vit", "timm:resnet50",
        "timm:convnext_tiny"]


@pytest.mark.parametrize("name", TINY)
def test_every_budget_between_the_smallest_and_the_free_peak_plans(name):
    """Every "smallest budget that fits" an error states fits when planned again, and every budget from it
    up to the unconstrained plan's peak plans with its peak under the budget, stage 1's own smallest too
    (which the default checkpoint=None must accept: stage 2 counts gradients as stage 1 does)."""
    size = "tiny"
    model, inputs = zoo.build(name, size, device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:2")
    free = autopar.plan(model, cluster, inputs, memory_budget=INF).peak_memory
    with pytest.raises(InfeasibleBudgetError) as info:
        autopar.plan(model, cluster, inputs, memory_budget=1.0)
    smallest = info.value.min_budget
    with pytest.raises(InfeasibleBudgetError) as stage1:
        autopar.plan(model, cluster, inputs, memory_budget=1.0, checkpoint="none")
    # stage 1's own smallest budget plans too, unless the exact account of its plan holds more than the ILP's
    # (two savers of one activation keeping two resharded copies): then the stated smallest is above it
    budgets = [smallest, max(smallest, stage1.value.min_budget)]
    budgets.append(smallest + 0.5 * (free - smallest))  # and one between the smallest and the free peak
    for budget in dict.fromkeys(budgets):  # the first two are often one budget: plan it once
        plan = autopar.plan(model, cluster, inputs, memory_budget=budget)
        assert plan.peak_memory <= budget, f"{name} at {budget:.0f}: peak {plan.peak_memory:.0f}"


def test_a_llama_8b_in_bf16_on_64_h100s_plans_with_checkpointing():
    model, inputs = zoo.build("llama", "8b", device="meta")
    model = model.to(torch.bfloat16)
    inputs = zoo.resize_inputs(inputs, batch=32, seq=2048)
    cluster = autopar.ClusterInfo.preset("64xH100")
    with pytest.raises(InfeasibleBudgetError):  # sharding alone does not fit the device
        autopar.plan(model, cluster, inputs, checkpoint="none")
    plan = autopar.plan(model, cluster, inputs)  # checkpoint=None: recompute where the budget needs it
    assert plan.regions and plan.peak_memory <= cluster.memory_per_device


def test_a_saved_plan_loads_equal_and_refuses_another_model(tmp_path):
    model, inputs = zoo.build("gpt2", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    plan = autopar.plan(model, cluster, inputs, memory_budget=INF, checkpoint=["transformer.h.0"])
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "autopar.plan" and data["version"] == 1 and data["fingerprint"] == plan.fingerprint
    assert data["options"]["checkpoint"] == ["transformer.h.0"]
    loaded = autopar.load_plan(path)
    assert loaded.to_json() == plan.to_json()
    assert loaded.regions == plan.regions and loaded.peak_memory == plan.peak_memory
    loaded.check_matches(trace(model, inputs), cluster)  # the graph it was made for
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        wider = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=128, n_positions=64))
    with pytest.raises(PlanMismatchError, match="traced graph differs.*transformer_wte_weight"):
        loaded.check_matches(trace(wider, inputs), cluster)
    with pytest.raises(PlanMismatchError, match="mesh_shape"):
        loaded.check_matches(trace(model, inputs), autopar.ClusterInfo.preset("cpu:4"))
    (tmp_path / "bad.json").write_text(json.dumps(dict(data, version=99)))
    with pytest.raises(AutoparError, match="format version 99"):
        autopar.load_plan(tmp_path / "bad.json")


def test_plan_and_autoparallelize_take_the_same_options():
    def keywords(fn):
        return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}

    fields = set(PlanOptions.__dataclass_fields__)
    assert {"memory_budget", "optimizer", "checkpoint", "time_limit", "kernels"} <= fields
    assert keywords(autopar.plan) - {"progress"} == keywords(autopar.autoparallelize) - {"progress", "plan"} == set()
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:2")
    with pytest.raises(TypeError, match="unknown planning option.*memory_bugdet"):
        autopar.plan(model, cluster, inputs, memory_bugdet=1e9)
    with pytest.raises(AutoparError, match="unknown optimizer"):
        autopar.plan(model, cluster, inputs, optimizer="lion")
    with pytest.raises(AutoparError, match="checkpoint must be"):
        autopar.plan(model, cluster, inputs, checkpoint="always")
    with pytest.raises(AutoparError, match="no op of the traced graph belongs to module 'fc9'"):
        autopar.plan(model, cluster, inputs, checkpoint=["fc9"])
    sgd = autopar.plan(model, cluster, inputs, optimizer="sgd")
    assert sgd.options.optimizer == "sgd" and sgd.memory.optimizer == 0


def test_one_model_of_parameter_state():
    """The strategy's memory (the report's column), the ILP's liveness and the plan's peak breakdown count the
    same parameter, gradient and optimizer bytes, for fp32 and bf16 weights."""
    # (param, grad, optimizer) bytes per element: fp32 + AdamW 4 + 4 + 8; bf16: 2 + 2 + (4 master + 8 moments)
    for dtype, factors in ((torch.float32, (4, 4, 8)), (torch.bfloat16, (2, 2, 12))):
        model, inputs = zoo.build("mlp", "tiny", device="meta")
        model = model.to(dtype)
        inputs = tuple(t.to(dtype) for t in inputs)
        plan = autopar.plan(model, autopar.ClusterInfo.preset("cpu:1"), inputs)
        n = sum(p.numel() for p in model.parameters())
        assert sum(r.memory for r in plan.rows if r.op == "param") == pytest.approx(n * sum(factors))
        for breakdown in (plan.memory, plan.sharding.memory):  # the Timeline's peak and the ILP's
            assert breakdown.params == pytest.approx(n * factors[0])
            assert breakdown.optimizer == pytest.approx(n * factors[2])
            assert breakdown.grads <= n * factors[1]


def test_no_stage_reads_a_plan_out_of_the_graph():
    root = pathlib.Path(autopar.__file__).parent
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r'meta(\[|\.get\()"strategy"', line)]
    assert hits == []


def test_infeasible_error_states_a_budget_in_bytes():
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    with pytest.raises(InfeasibleBudgetError) as info:
        autopar.plan(model, autopar.ClusterInfo.preset("cpu:2"), inputs, memory_budget=16.0)
    assert math.isfinite(info.value.min_budget) and f"({info.value.min_budget:.0f} bytes)" in str(info.value)


def test_mesh_search_plans_every_mesh_and_returns_the_fastest(tmp_path):
    """2 nodes of 2 H100s: meshes 4 (crossing nodes) and 2x2; the search's plan is at least as fast as the plan
    on each fixed mesh, lists both, is a normal Plan on the chosen mesh, and saves and loads."""
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("2x2xH100")
    found = autopar.plan(model, cluster, inputs, mesh="search")
    assert found.mesh_shape == (2, 2)  # its all-reduces stay inside a node
    assert [t.mesh for t in found.meshes] == cluster.topology.meshes() == [(4,), (2, 2)]
    for shape in cluster.topology.meshes():
        fixed = autopar.plan(model, cluster, inputs, mesh=shape)
        assert fixed.cluster == cluster.with_mesh(shape) and fixed.mesh_shape == shape
        assert found.step_time <= fixed.step_time, shape
        trial = next(t for t in found.meshes if t.mesh == shape)
        assert (trial.step_time, trial.peak_memory) == pytest.approx((fixed.step_time, fixed.peak_memory))
    assert found.cluster == cluster.with_mesh(found.mesh_shape) and found.options.mesh == "search"
    assert "mesh search: 2 of 2 meshes planned" in found.report() and "chosen" in found.report()
    from autopar.report.html import render_html

    assert "Mesh search (2 meshes)" in render_html(found.to_json())
    found.save(tmp_path / "plan.json")
    loaded = autopar.load_plan(tmp_path / "plan.json")
    assert loaded.to_json() == found.to_json() and loaded.meshes == found.meshes
    assert loaded.cluster == found.cluster and loaded.cluster.topology == cluster.topology
    from autopar.solver.mesh_search import cluster_for

    loaded.check_matches(trace(model, inputs), cluster_for(cluster, "search", loaded), found.options)


def test_mesh_search_in_parallel_gives_the_plan_of_the_sequential_one():
    """workers=2: the cluster's own mesh first, the others in forked processes; the same chosen plan, every
    mesh's step time and peak as planned one after the other (no budget binds, so no mesh is bounded out),
    and a plan that still matches options asking for another number of workers."""
    model, inputs = zoo.build("gpt2", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("2x4xH100")
    one = autopar.plan(model, cluster, inputs, mesh="search")
    lines: list[str] = []
    two = autopar.plan(model, cluster, inputs, mesh="search", workers=2, progress=lines.append)
    assert len(one.meshes) > 3 and any("(2 processes)" in line for line in lines)
    assert two.mesh_shape == one.mesh_shape and two.step_time == one.step_time
    assert [str(r.strategy) for r in two.sharding.rows] == [str(r.strategy) for r in one.sharding.rows]
    assert [(t.mesh, t.step_time, t.peak_memory, t.note) for t in two.meshes] == \
        [(t.mesh, t.step_time, t.peak_memory, t.note) for t in one.meshes]
    two.check_matches(trace(model, inputs), cluster.with_mesh(two.mesh_shape), PlanOptions(mesh="search"))
    with pytest.raises(AutoparError, match="workers must be a positive integer or 'auto'"):
        PlanOptions(workers=0)


def test_mesh_search_drops_meshes_a_permutation_dominates():
    from autopar.solver.mesh_search import candidates

    kept, dominated = candidates(autopar.ClusterInfo.preset("8x8xH100"))
    assert dominated[(2, 32)] == (32, 2) and dominated[(4, 16)] == (16, 4)  # the 32 (16) would cross nodes
    assert {(8, 2, 4), (8, 4, 2), (8, 8), (64,)} <= set(kept) and not set(kept) & set(dominated)
    assert set(kept) | set(dominated) == set(autopar.ClusterInfo.preset("8x8xH100").topology.meshes())


def test_bad_mesh_values_are_clear_errors():
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:4")
    with pytest.raises(AutoparError, match="mesh must be None.*'search'.*got 'serach'"):
        autopar.plan(model, cluster, inputs, mesh="serach")
    with pytest.raises(AutoparError, match="mesh must be"):
        autopar.plan(model, cluster, inputs, mesh=(2, 0))
    with pytest.raises(AutoparError, match="mesh 3x3 has 9 devices, the cluster cpu:4 has 4"):
        autopar.plan(model, cluster, inputs, mesh=(3, 3))
    bare = dataclasses.replace(cluster, topology=None)
    with pytest.raises(AutoparError, match="mesh='search' needs to know the cluster's nodes"):
        autopar.plan(model, bare, inputs, mesh="search")


def test_a_mesh_whose_fastest_plan_is_slower_than_the_best_skips_stage_2():
    """A mesh whose fastest plan (no budget) does not fit is bounded below by it: no better than the best so far,
    it is not planned further; otherwise it is planned as ``plan_graph`` would."""
    from autopar.solver.mesh_search import _plan_mesh
    from autopar.solver.planner import plan_graph

    model, inputs = zoo.build("mlp", "tiny", device="meta")
    gm = trace(model, inputs)
    cluster = autopar.ClusterInfo.preset("2x2xH100").with_mesh((4,))
    free = plan_graph(gm, cluster, PlanOptions(memory_budget=INF))
    options = PlanOptions(memory_budget=0.95 * free.peak_memory, mesh="search")
    plan, note = _plan_mesh(gm, cluster, options, lambda line: None, best=free.step_time)
    assert plan is None and note.startswith("slower than the chosen: its fastest plan takes")
    plan, note = _plan_mesh(gm, cluster, options, lambda line: None, best=INF)
    fixed = plan_graph(gm, cluster, options)
    assert (plan.step_time, plan.peak_memory) == pytest.approx((fixed.step_time, fixed.peak_memory)) and not note
    assert plan.step_time >= free.step_time and plan.peak_memory <= options.memory_budget
    fits, _ = _plan_mesh(gm, cluster, PlanOptions(memory_budget=INF), lambda line: None, best=0.0)
    assert fits.step_time == pytest.approx(free.step_time)  # its fastest plan fits: that is the plan, bound or not
