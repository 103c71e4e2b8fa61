"""Strategy enumeration: counts derived from the rules, consistency, partial flow, fallbacks, costs."""
from __future__ import annotations

import torch

from autopar import ClusterInfo, ShardingSpec
from autopar.solver.build import build_strategies
from autopar.solver.cost_model import grad_sync_time
from autopar.solver.strategies import strategies_for
from autopar.solver.strategies.shape import view_groups
from autopar.tracer import trace
from tests.solver.conftest import node, traced_mlp

CPU4, CPU2x2 = ClusterInfo.preset("cpu:4"), ClusterInfo.preset("cpu:2x2")


def specs(strategies) -> set[str]:
    return {str(s) for s in strategies}


def test_linear_on_1d_mesh_has_five_strategies():
    # x (8, 64) @ W (256, 64)^T + b: per mesh axis the rule offers R, S(b), S(n), S(k) -> P, and x partial -> P.
    # Every dim divides 4, so a 1-D mesh of 4 has exactly 5.
    gm = traced_mlp(8, 64)
    got = strategies_for(node(gm, "linear"), CPU4)
    assert specs(got) == {"RR = RR x RR x R", "S0R = S0R x RR x R", "RS0 = RR x S0R x S0",
                          "RR+P0 = RS0 x RS0 x R+P0", "RR+P0 = RR+P0 x RR x R+P0"}
    assert len(got) == 5


def test_linear_on_2d_mesh_has_twenty_five_strategies():
    # One of the 5 options per mesh axis, 5 x 5 = 25: sizes 8, 64, 256 divide 2 x 2, and two
    # options never claim the same mesh axis (each axis picks one), so none is filtered.
    gm = traced_mlp(8, 64)
    got = strategies_for(node(gm, "linear"), CPU2x2)
    assert len(got) == 25 and len(specs(got)) == 25
    assert "S0S1 = S0R x S1R x S1" in specs(got)  # batch on axis 0, output features on axis 1
    assert "RR+P01 = RS01 x RS01 x R+P01" in specs(got)  # k split over both axes


def test_divisibility_filters_strategies():
    # batch 6 does not divide 4: S(b) is gone, the other four stay.
    gm = traced_mlp(6, 64)
    got = specs(strategies_for(node(gm, "linear"), CPU4))
    assert len(got) == 4 and not any(s.startswith("S0R =") for s in got)


def test_every_strategy_fits_its_shapes(mlp_small):
    sg = build_strategies(mlp_small, CPU2x2)
    for n in sg.nodes:
        for s in n.meta["strategies"]:
            tm = n.meta["tensor"]
            if tm is not None and n.op != "output":
                assert s.output.fits(tm.shape, CPU2x2.mesh_shape), (n.name, str(s))
            for inp, spec in zip(n.all_input_nodes, s.inputs):
                if spec is not None:
                    assert spec.fits(inp.meta["tensor"].shape, CPU2x2.mesh_shape), (n.name, str(s))


def test_partials_flow_only_through_linear_ops():
    gm = traced_mlp(8, 64, loss=True)
    sub = specs(strategies_for(node(gm, "sub"), CPU4))
    assert "RR+P0 = RR+P0 x RR+P0" in sub  # out - y: both partial
    assert not any("+P" in s for s in specs(strategies_for(node(gm, "gelu"), CPU4)))  # nonlinear
    mean = specs(strategies_for(node(gm, "mean"), CPU4))
    assert {"()+P0 = S0R", "()+P0 = RR+P0"} <= mean  # a sum over a split dim is partial


def test_params_are_stored_replicated_or_split_never_partial(mlp_small):
    got = strategies_for(node(mlp_small, "fc1_weight"), CPU2x2)
    assert specs(got) == {"RR", "S0R", "S1R", "S01R", "RS0", "RS1", "RS01", "S0S1", "S1S0"}
    w = node(mlp_small, "fc1_weight").meta["tensor"]
    replicated = next(s for s in got if str(s) == "RR")
    assert replicated.memory == 4 * w.nbytes  # param, grad, two AdamW moments
    assert replicated.comm_time == grad_sync_time(w.nbytes, ShardingSpec.parse("RR"), CPU2x2) > 0
    assert next(s for s in got if str(s) == "S0S1").comm_time == 0  # split on every axis: no grad sync


def test_output_wants_everything_whole(mlp_small):
    (out,) = strategies_for(node(mlp_small, "output"), CPU4)
    assert all(s is None or s.is_replicated() for s in out.inputs)


def test_view_groups_map_the_leading_dim():
    assert view_groups((4, 8, 6), (32, 6)) == [([0, 1], [0]), ([2], [1])]
    assert view_groups((32, 6), (4, 8, 6)) == [([0], [0, 1]), ([1], [2])]
    assert view_groups((2, 16, 64), (2, 16, 4, 16)) == [([0], [0]), ([1], [1]), ([2], [2, 3])]
    assert view_groups((1, 8), (8,)) == [([1], [0])]


def test_view_and_permute_strategies():
    class M(torch.nn.Module):
        def forward(self, x):  # (b, s, h) -> (b, s, nh, hd) -> (b, nh, s, hd)
            return x.view(4, 8, 4, 16).permute(0, 2, 1, 3).reshape(32, 4, 16)

    gm = trace(M(), (torch.randn(4, 8, 64, device="meta"),))
    view, permute, view2 = [n for n in gm.graph.nodes if n.meta.get("op") in ("view", "permute")]
    expected = {"RRRR = RRR", "RRS0R = RRS0", "S0RRR = S0RR", "RS0RR = RS0R", "RRRR+P0 = RRR+P0"}
    assert specs(strategies_for(view, CPU4)) == expected  # h -> (nh, hd): a split of h lands on nh
    assert "RS0RR = RRS0R" in specs(strategies_for(permute, CPU4))  # heads move from dim 2 to dim 1
    # (b, nh, s, hd) -> (b*nh, s, hd): only b, the leading dim of the merged group, carries its split
    got = specs(strategies_for(view2, CPU4))
    assert "S0RR = S0RRR" in got and not any(s.endswith("= RS0RR") for s in got)


def test_op_without_rule_falls_back_to_replicate():
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.logcumsumexp(x, 1)

    gm = trace(M(), (torch.randn(8, 8, device="meta"),))
    cum = next(n for n in gm.graph.nodes if n.op == "call_function")
    got = strategies_for(cum, CPU4)
    assert specs(got) == {"RR = RR"} and cum.meta["fallback"] is True


def test_sharding_divides_compute_but_partial_does_not():
    gm = traced_mlp(8, 64)
    got = {str(s): s for s in strategies_for(node(gm, "linear"), CPU4)}
    full = got["RR = RR x RR x R"].compute_time
    assert got["S0R = S0R x RR x R"].compute_time < full
    assert got["RR+P0 = RR+P0 x RR x R+P0"].compute_time == full  # every rank multiplies its whole partial


def test_class_weighted_mean_cross_entropy_is_never_batch_split():
    class Weighted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)
            self.register_buffer("w", torch.linspace(0.5, 2.0, 8))

        def forward(self, x, y):
            return torch.nn.functional.cross_entropy(self.fc(x), y, weight=self.w)

    gm = trace(Weighted(), (torch.randn(32, 16), torch.randint(0, 8, (32,))))
    node = next(n for n in gm.graph.nodes if n.meta.get("op") == "cross_entropy")
    specs = {str(s.inputs[0]) for s in strategies_for(node, ClusterInfo.preset("cpu:4"))}
    assert specs and not any(spec.startswith("S") for spec in specs), specs
