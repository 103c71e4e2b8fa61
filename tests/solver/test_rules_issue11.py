"""The rules for the ops the new zoo models need: strategy counts on a 1-D mesh of 4, and every strategy
run shard by shard (no process group) gives the single-device result.

The numerical check: for each strategy of the op's node, every rank's input pieces are cut from the
global inputs by the strategy's input specs (a partial input split into unequal summands), the op runs
on them with its local arguments (``runtime.localize.local_args``), and the pieces are put back by the
output spec (partial pieces summed) and compared with the global output.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from autopar import ClusterInfo
from autopar.runtime.localize import local_args, local_target
from autopar.solver.strategies import strategies_for
from autopar.tracer import trace

CPU4 = ClusterInfo.preset("cpu:4")
CPU2x2 = ClusterInfo.preset("cpu:2x2")


def _module(fn):
    return type("M", (torch.nn.Module,), {"forward": lambda self, *xs: fn(*xs)})()


def _node(gm: fx.GraphModule, op: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.meta.get("op") == op)


def _values(gm: fx.GraphModule, inputs) -> dict:
    out = {}

    class Record(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            out[n] = value.clone() if isinstance(value, torch.Tensor) else value  # as made, before later in-place ops
            return value

    Record(gm).run(*inputs)
    return out


def _piece(t: torch.Tensor, spec, mesh_shape, coord):
    local = t[spec.local_slices(tuple(t.shape), mesh_shape, coord)].clone()
    for axis in spec.partial:  # unequal summands: rank r along the axis holds w_r * t, sum w_r = 1
        n = mesh_shape[axis]
        local = local * ((coord[axis] + 1) / (n * (n + 1) / 2))
    return local


def _assemble(pieces: dict, spec, shape, mesh_shape, dtype) -> torch.Tensor:
    used = spec.used_axes()
    out = torch.zeros(shape, dtype=dtype)
    for coord, local in pieces.items():
        if any(coord[a] for a in range(len(mesh_shape)) if a not in used):
            continue  # replicated copies: take one
        out[spec.local_slices(tuple(shape), mesh_shape, coord)] += local
    return out


def check_every_strategy(module, inputs, op: str, cluster=CPU2x2, atol=1e-5) -> int:
    """Run each strategy of ``op``'s node shard by shard and compare with the global result."""
    gm = trace(module, inputs)
    node = _node(gm, op)
    values = _values(gm, inputs)
    want = values[node]
    mesh_shape = cluster.mesh_shape
    strategies = strategies_for(node, cluster)
    for strategy in strategies:
        specs = dict(zip(node.all_input_nodes, strategy.inputs))
        pieces = {}
        for coord in itertools.product(*(range(n) for n in mesh_shape)):
            def local(a, specs=specs, coord=coord):
                spec = specs.get(a)
                return values[a] if spec is None else _piece(values[a], spec, mesh_shape, coord)
            args = fx.node.map_arg(node.args, local)
            kwargs = fx.node.map_arg(node.kwargs, local)
            args = local_args(node, strategy, tuple(args), mesh_shape)
            pieces[coord] = local_target(node, strategy)(*args, **kwargs)  # what the rank runs
        got = _assemble(pieces, strategy.output, want.shape, mesh_shape, want.dtype)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5, msg=lambda m, s=strategy: f"{op} {s}: {m}")
    return len(strategies)


def count(module, inputs, op: str, cluster=CPU4) -> set[str]:
    gm = trace(module, inputs)
    return {str(s) for s in strategies_for(_node(gm, op), cluster)}


x4 = torch.randn


# ---- batched matmuls ------------------------------------------------------------------------------------
def test_baddbmm_is_a_batched_matmul_with_a_broadcast_bias():
    # alibi (b, 1, n) + q (b, m, k) @ k (b, k, n): per axis R, S(b), S(m), S(n), S(k) -> P, q P, k P -> P;
    # the bias follows: split on b and n, R on m (broadcast), P with the partial output
    fn = _module(lambda a, q, k: torch.baddbmm(a, q, k, beta=0.5, alpha=0.25))
    inputs = (x4(4, 1, 8), x4(4, 8, 4), x4(4, 4, 8))
    got = count(fn, inputs, "baddbmm")
    assert len(got) == 7 and "RS0R = RRR x RS0R x RRR" in got and "RRR+P0 = RRR+P0 x RRS0 x RS0R" in got
    assert check_every_strategy(fn, inputs, "baddbmm") == 7 * 7


def test_einsum_letters_are_dims():
    # "bhqd,bhkd->bhqk": free b, h, q, k; contracted d; each operand partial: 1 + 4 + 1 + 2 = 8
    fn = _module(lambda q, k: torch.einsum("b h q d, b h k d -> b h q k", q, k))
    inputs = (x4(4, 4, 8, 4), x4(4, 4, 8, 4))
    assert len(count(fn, inputs, "einsum")) == 8
    assert check_every_strategy(fn, inputs, "einsum") == 8 * 8
    # implicit output and an ellipsis, as MaxViT writes them
    fn = _module(lambda q, r: torch.einsum("...ij,jk", q, r))
    assert check_every_strategy(fn, (x4(2, 4, 8), x4(8, 4)), "einsum") > 1


# ---- copies ------------------------------------------------------------------------------------------
def test_repeat_interleave_splits_every_dim():
    fn = _module(lambda x: torch.repeat_interleave(x, 2, dim=-1))  # GPT-J's rotary tables
    assert count(fn, (x4(4, 8),), "repeat_interleave") == {"RR = RR", "S0R = S0R", "RS0 = RS0", "RR+P0 = RR+P0"}
    assert check_every_strategy(fn, (x4(4, 8),), "repeat_interleave") == 16  # 4 per axis


def test_repeat_tiles_whole_copies_per_rank():
    fn = _module(lambda x: x.repeat(4, 1, 2))  # a new leading dim of 4, dim 1 kept, dim 2 tiled twice
    got = count(fn, (x4(8, 4),), "repeat")
    # R, S(new dim: x whole, 1 copy each), S(dim 1: x split), P; tiling 2 does not divide 4 ranks
    assert got == {"RRR = RR", "S0RR = RR", "RS0R = S0R", "RRR+P0 = RR+P0"}
    assert check_every_strategy(fn, (x4(8, 4),), "repeat") > 4


# ---- norms, convs, resampling, pooling -----------------------------------------------------------------------
def test_group_norm_splits_batch_or_whole_groups():
    gn = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(gn.weight), torch.nn.init.normal_(gn.bias)
    got = count(gn, (x4(4, 8, 3, 3),), "group_norm")
    assert got == {"RRRR = RRRR x R x R", "S0RRR = S0RRR x R x R", "RS0RR = RS0RR x S0 x S0"}
    assert check_every_strategy(gn, (x4(4, 8, 3, 3),), "group_norm") == 9
    one = torch.nn.GroupNorm(1, 8)  # PoolFormer's GroupNorm1: only the batch splits
    assert count(one, (x4(4, 8, 3, 3),), "group_norm") == {"RRRR = RRRR x R x R", "S0RRR = S0RRR x R x R"}


def test_group_norm_runs_a_shard_whose_groups_hold_one_value():
    # fuzz seed 12086: F.group_norm refuses (N * C / G) * prod(S) == 1, a count the batch is part of, so
    # the whole (2, 2, 1) passes and its half (1, 2, 1) on a rank did not; each sample is normalised alone
    gn = torch.nn.GroupNorm(2, 2)
    assert check_every_strategy(gn, (x4(2, 2, 1),), "group_norm") == 7  # N, C or both split


def test_conv1d_has_the_conv2d_rule():
    conv = torch.nn.Conv1d(8, 8, 3, padding=1)  # Whisper's stem
    assert len(count(conv, (x4(4, 8, 16),), "conv1d")) == 5
    assert check_every_strategy(conv, (x4(4, 8, 16),), "conv1d") == 25
    depthwise = torch.nn.Conv1d(8, 8, 3, padding=1, groups=8)
    assert check_every_strategy(depthwise, (x4(4, 8, 16),), "conv1d") > 4


def test_interpolate_and_adaptive_avg_pool1d_split_batch_and_channels():
    up = _module(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    assert count(up, (x4(4, 8, 4, 4),), "interpolate") == {"RRRR = RRRR", "S0RRR = S0RRR", "RS0RR = RS0RR",
                                                           "RRRR+P0 = RRRR+P0"}
    assert check_every_strategy(up, (x4(4, 8, 4, 4),), "interpolate") == 16
    pool = _module(lambda x: F.adaptive_avg_pool1d(x, 1))
    assert len(count(pool, (x4(4, 8, 6),), "adaptive_avg_pool1d")) == 4
    assert check_every_strategy(pool, (x4(4, 8, 6),), "adaptive_avg_pool1d") == 16


# ---- selections ----------------------------------------------------------------------------------------------
def test_index_with_a_list_beside_slices():
    fn = _module(lambda x: x[..., [-2], :])  # Falcon's multi-query k: dims 0, 1, 3 whole
    assert len(count(fn, (x4(4, 8, 6, 4),), "index")) == 5
    assert check_every_strategy(fn, (x4(4, 8, 6, 4),), "index") > 5


def test_index_with_a_tensor_after_a_slice():
    idx = torch.randint(0, 4, (4, 4))
    fn = _module(lambda b, i: b[:, i])  # LeViT's attention biases: (heads, positions)[:, (n, n)]
    # R, S(heads) with the index whole, S of either index dim with b whole, P(b)
    assert len(count(fn, (x4(4, 4), idx), "index")) == 5
    assert check_every_strategy(fn, (x4(4, 4), idx), "index") > 5


def test_scatter_and_argmax_split_the_other_dims():
    fn = _module(lambda x, i: x.scatter(1, i, 1.0))
    idx = torch.randint(0, 8, (4, 8))
    assert count(fn, (torch.zeros(4, 8), idx), "scatter") == {"RR = RR x RR", "S0R = S0R x S0R"}
    assert check_every_strategy(fn, (torch.zeros(4, 8), idx), "scatter") == 4
    am = _module(lambda x: x.argmax(dim=-1))  # CLIP's end-token position
    assert count(am, (x4(4, 8),), "argmax") == {"R = RR", "S0 = S0R"}
    assert check_every_strategy(am, (x4(4, 8),), "argmax") == 4


def _clone_then_mutate(x):
    y = x.clone()  # kept as clone: an in-place user that cannot be made out of place (a view was taken first)
    v = y[:, :1]
    y.mul_(2)
    return y + v


@pytest.mark.parametrize("op, fn", [("sign", torch.sign), ("ceil", torch.ceil), ("clone", _clone_then_mutate),
                                    ("type", lambda x: x.type(torch.float64))])
def test_pointwise_additions(op, fn):
    module = _module(lambda x: fn(x * 1))
    got = count(module, (x4(4, 8),), op)
    partial = op in ("clone", "type")  # value-preserving copies keep partial sums
    assert got == {"RR = RR", "S0R = S0R", "RS0 = RS0"} | ({"RR+P0 = RR+P0"} if partial else set())
    check_every_strategy(module, (x4(4, 8),), op, atol=1e-5)


def test_zeros_like_of_a_sharded_tensor_is_made_at_its_global_shape():
    # torch.where(mask, x, torch.zeros_like(x)): zeros_like is x.new_zeros(shape) with the global shape, and
    # may itself be made sharded (each rank makes its piece), so a sharded x never leaks its local shape
    fn = _module(lambda x: torch.where(x > 0, x, torch.zeros_like(x)))
    gm = trace(fn, (x4(4, 8),))
    zeros = _node(gm, "new_zeros")
    assert zeros.args[1] == (4, 8)
    assert {str(s) for s in strategies_for(zeros, CPU4)} == {"RR", "S0R", "RS0"}  # x read for dtype only
    assert check_every_strategy(fn, (x4(4, 8),), "new_zeros") == 9
