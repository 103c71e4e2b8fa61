"""Regressions of the crashes random graphs found (issue 11), each at its root, without processes.

- a tuple-valued producer is never resharded whole: ``cat(x.split(..))`` reads getitems, ``topk(..).values``
  is a getitem, and a strategy pair the runtime cannot run is excluded from the ILP, not priced;
- stateful nodes (BatchNorm's running statistics, ``num_batches_tracked.add_(1)``) never recompute;
- a parameter the forward never reads is kept in the traced graph;
- a solver time limit without a plan falls back to the plan needing least memory when it fits;
- SyncBatchNorm computes its statistics in the dtype ``nn.BatchNorm`` does.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import autopar
from autopar.solver import ilp
from autopar.solver.build import build_strategies
from autopar.solver.checkpoint import stateful
from autopar.solver.checkpoint_dp import Chain, chen_schedule, plan_chain
from autopar.tracer import trace
from tests.solver.conftest import traced_mlp

CPU4 = autopar.ClusterInfo.preset("cpu:4")


class _Pieces(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 32)

    def forward(self, x):
        h = self.fc(x)
        return torch.cat(h.split(8, dim=-1), dim=0).sum() + h.topk(4, dim=-1).values.sum()


def test_no_op_takes_a_whole_tuple():
    x = torch.randn(8, 16)
    model = _Pieces()
    gm = trace(model, (x,))
    torch.testing.assert_close(gm(x), model(x))
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            if isinstance(arg.meta.get("val"), (tuple, list)):
                assert node.meta["op"] == "getitem", f"%{node.name} ({node.meta['op']}) reads the tuple %{arg.name}"
    assert not any(e.forbidden is not None for e in build_strategies(gm, CPU4).edges)


def test_a_pair_that_cannot_run_is_never_chosen():
    gm = traced_mlp(1024, 64)  # data parallel when nothing is forbidden
    sg = build_strategies(gm, CPU4)
    plan = ilp.solve(sg, CPU4, memory_budget=float("inf"))
    t, edge = next((t, e) for t, e in enumerate(sg.edges)
                   if e.dst.meta["op"] == "linear" and e.src.op == "call_function")
    chosen = (plan.strategy_of(edge.src.name).output, plan.strategy_of(edge.dst.name).inputs[edge.index])
    outs = list(dict.fromkeys(s.output for s in edge.src.meta["strategies"]))
    wants = list(dict.fromkeys(s.inputs[edge.index] for s in edge.dst.meta["strategies"]))
    forbidden = np.zeros(edge.spec_cost.shape, dtype=bool)
    forbidden[outs.index(chosen[0]), wants.index(chosen[1])] = True  # the pair the free plan runs
    sg.edges[t] = dataclasses.replace(edge, forbidden=forbidden)
    again = ilp.solve(sg, CPU4, memory_budget=float("inf"))
    now = (again.strategy_of(edge.src.name).output, again.strategy_of(edge.dst.name).inputs[edge.index])
    assert now != chosen and again.step_time >= plan.step_time


# ---- stateful nodes stay out of recomputed regions --------------------------------------------------------------
class _ConvBn(torch.nn.Module):
    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1),
                                                                torch.nn.BatchNorm2d(8), torch.nn.ReLU())
                                            for _ in range(depth)])

    def forward(self, x):
        for block in self.blocks:  # a stateful stage, then a pointwise one that saves a lot (recomputable)
            x = block(x)
            x = x + torch.tanh(x) * torch.sigmoid(x) * torch.exp(-x * x)
        return x.square().mean()


def test_a_chain_never_recomputes_a_fixed_stage():
    chain = Chain(forward=(1.0,) * 4, saved=(10.0,) * 4, inputs=(1.0,) * 4, transient=(0.0,) * 4,
                  fixed=(False, True, False, False))
    schedule = plan_chain(chain, budget=25.0)
    assert all(not (a <= 1 <= b) for a, b, recomputed in schedule.segments if recomputed), schedule
    assert all(not (a <= 1 <= b) for a, b, r in chen_schedule(chain).segments if r)


def test_batch_norm_stays_out_of_recomputed_regions_and_updates_its_statistics_once():
    from autopar.runtime.checkpoint_regions import wrap_traced

    cluster = autopar.ClusterInfo.preset("cpu:1")
    model, x = _ConvBn(), torch.randn(4, 8, 8, 8)
    gm = trace(model, (x,))
    assert sum(stateful(n) for n in gm.graph.nodes) == 4 + 4  # the 4 batch norms, their 4 num_batches_tracked.add_
    plan = autopar.plan(model, cluster, (x,), memory_budget=0.7 * autopar.plan(model, cluster, (x,)).peak_memory)
    assert len(plan.regions) >= 2  # the pointwise stages recompute
    by_name = {n.name: n for n in gm.graph.nodes}
    for region in plan.regions:
        assert not any(stateful(by_name[name]) for name in region), region
    ref = copy.deepcopy(model)
    run = wrap_traced(gm, plan.regions)
    run(x).backward()  # no "modified by an inplace operation"
    ref(x).backward()
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(run.get_buffer(name), buf, msg=lambda m, n=name: f"{n}: {m}")


def test_user_regions_are_cut_around_stateful_nodes():
    from autopar.solver.checkpoint import module_regions

    gm = trace(_ConvBn(2), (torch.randn(4, 8, 8, 8),))
    by_name = {n.name: n for n in gm.graph.nodes}
    regions = module_regions(gm, ("blocks.0",))
    assert len(regions) >= 2 and not any(stateful(by_name[n]) for r in regions for n in r)


# ---- a parameter the forward never reads ---------------------------------------------------------------------------
class _Unread(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.mask_token = torch.nn.Parameter(torch.randn(1, 8))

    def forward(self, x):
        return self.fc(x).sum()


def test_an_unread_parameter_is_kept_and_planned():
    x = torch.randn(4, 8)
    gm = trace(_Unread(), (x,))
    kept = [n for n in gm.graph.nodes if n.meta.get("unread")]
    assert [n.meta["param"] for n in kept] == ["mask_token"]
    assert isinstance(gm.get_parameter("mask_token"), torch.nn.Parameter)
    plan = autopar.plan(_Unread(), CPU4, (x,))
    assert plan.row(kept[0].name).op == "param"


# ---- a time limit without a plan -----------------------------------------------------------------------------
def test_time_limit_without_a_plan_falls_back_to_the_leanest_plan(monkeypatch):
    gm = traced_mlp(1024, 64)
    sg = build_strategies(gm, CPU4)
    free = ilp.solve(sg, CPU4, memory_budget=float("inf"))
    budget = 0.95 * free.peak_memory
    real, calls = ilp.run_solver, []

    def first_times_out(prob, backend):
        calls.append(prob.name)
        return 0 if len(calls) == 1 else real(prob, backend)  # the budgeted solve stops with no incumbent

    monkeypatch.setattr(ilp, "run_solver", first_times_out)
    plan = ilp.solve(sg, CPU4, memory_budget=budget)
    assert plan.status == "feasible (time limit; the plan needing least memory)"
    assert plan.peak_memory <= budget and len(calls) == 2


# ---- SyncBatchNorm's statistics dtype --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_sync_batch_norm_statistics_in_the_single_device_dtype(dtype):
    from autopar.runtime.sync_batchnorm import SyncBatchNormFunction, stat_dtype

    torch.manual_seed(0)
    x = (torch.randn(8, 4, 5, 5, dtype=torch.float64) * 3 + 1).to(dtype)
    w, b = torch.rand(4, dtype=dtype) + 0.5, torch.randn(4, dtype=dtype)
    y, mean, var, _count = SyncBatchNormFunction.apply(x, w, b, 1e-5, [])  # no groups: one device's sums
    want = torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    assert y.dtype == dtype
    assert mean.dtype == stat_dtype(dtype) == (torch.float32 if dtype == torch.bfloat16 else dtype)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(y, want, atol=tol, rtol=tol)


class _ShapeOfAValue(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        top = torch.topk(x, 4, dim=-1).values  # needs no gradient: its .shape is a node of its own
        return self.fc(x).sum() * top.shape[-1]


def test_a_shape_read_of_a_value_without_gradient_is_priced():
    """Fuzz seed 7065: ``topk(..).values.shape`` is a tuple node holding no tensor; pricing it looked for
    a tensor's dtype to turn FLOPs into time and raised StopIteration."""
    gm = trace(_ShapeOfAValue(), (torch.randn(4, 16),))
    shape = next(n for n in gm.graph.nodes if n.target is getattr and n.args[1] == "shape")
    build_strategies(gm, CPU4)
    assert shape.meta["strategies"] and all(np.isfinite(s.compute_time) for s in shape.meta["strategies"])
    assert autopar.plan(_ShapeOfAValue(), CPU4, (torch.randn(4, 16),)).status == "optimal"
