"""autopar/runtime/shape_consistency.py (and collectives.py, mesh.py).

Tier 1 is pure planning. Tier 2 spawns ONE gloo world per mesh size and, inside it, converts a
known global tensor between EVERY pair of specs (partial sums included), checking forward values,
the adjoint identity sum_r <g_r, y_r> = sum_r <x_r.grad, x_r>, and that the true global gradient is
recovered under the gradient convention (R axes carry gradient contributions that sum to the true
gradient; P axes carry the whole gradient on every rank). The parent does every comparison.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from autopar import ClusterInfo, ShardingSpec
from autopar.runtime.shape_consistency import CommStep, ShapeConsistencyManager
from tests.distributed import run_distributed

S = ShardingSpec.parse


def all_specs(shape, mesh_shape) -> list[ShardingSpec]:
    """Every spec of ``shape``: per mesh axis R, S(dim) for each dim, or P; kept when it divides evenly."""
    out = []
    for choice in itertools.product(["R", "P", *range(len(shape))], repeat=len(mesh_shape)):
        shard = {a: c for a, c in enumerate(choice) if isinstance(c, int)}
        spec = ShardingSpec.from_axis_map(len(shape), shard, [a for a, c in enumerate(choice) if c == "P"])
        if spec.fits(shape, mesh_shape):
            out.append(spec)
    return out


# ---- tier 1: planning is pure ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scm() -> ShapeConsistencyManager:
    return ShapeConsistencyManager(ClusterInfo.preset("cpu:2x2"))


def test_same_spec_costs_nothing(scm):
    for spec in all_specs((8, 8), (2, 2)):
        assert scm.plan(spec, spec, (8, 8), 4) == ()
        assert scm.cost(spec, spec, (8, 8), 4) == 0.0


def test_all_reduce_is_cheaper_than_reduce_scatter_then_all_gather(scm):
    shape = (1024, 1024)
    assert [str(s) for s in scm.plan(S("RR+P0"), S("RR"), shape, 4)] == ["all_reduce(axis=0)"]
    via_shard = scm.cost(S("RR+P0"), S("S0R"), shape, 4) + scm.cost(S("S0R"), S("RR"), shape, 4)
    assert scm.cost(S("RR+P0"), S("RR"), shape, 4) < via_shard


def test_plans_are_shortest():
    one_d = ShapeConsistencyManager(ClusterInfo.preset("cpu:4"))
    assert [str(s) for s in one_d.plan(S("S0R"), S("RS0"), (8, 8), 4)] == ["all_to_all(axis=0, dim=0, dim_to=1)"]
    two_d = ShapeConsistencyManager(ClusterInfo.preset("cpu:2x2"))
    assert [str(s) for s in two_d.plan(S("RR+P0"), S("S0R"), (8, 8), 4)] == ["reduce_scatter(axis=0, dim=0)"]
    assert [str(s) for s in two_d.plan(S("S01R"), S("RR"), (8, 8), 4)] == \
        ["all_gather(axis=1, dim=0)", "all_gather(axis=0, dim=0)"]  # last axis of a dim goes first
    assert [s.kind for s in two_d.plan(S("RR"), S("S0S1"), (8, 8), 4)] == ["split", "split"]


def test_steps_describe_both_directions(scm):
    (step,) = scm.plan(S("S0S1"), S("S0R"), (8, 8), 4)
    assert isinstance(step, CommStep) and str(step) == "all_gather(axis=1, dim=1)"
    assert step.describe() == "all_gather(axis=1, dim=1): S0S1 -> S0R, all-gather in forward, " \
                              "reduce-scatter (sum) in backward"
    with pytest.raises(AttributeError):
        step.axis = 0  # frozen


def test_cache_returns_identical_results(scm):
    assert scm.plan(S("S0S1"), S("S1S0"), (8, 8), 4) is scm.plan(S("S0S1"), S("S1S0"), (8, 8), 4)
    first = scm.cost(S("S0S1"), S("S1S0"), (8, 8), 4)
    assert scm.cost(S("S0S1"), S("S1S0"), torch.Size([8, 8]), 4) == first


def test_every_pair_of_the_16_specs_has_a_plan(scm):
    specs = all_specs((8, 8), (2, 2))
    assert len(specs) == 16
    for src, dst in itertools.product(specs, specs):
        steps = scm.plan(src, dst, (8, 8), 4)
        assert (steps[0].src, steps[-1].dst) == (src, dst) if steps else src == dst
        assert all(a.dst == b.src for a, b in zip(steps, steps[1:]))
        assert scm.cost(src, dst, (8, 8), 4) > 0 or src == dst


def test_unreachable_target_names_both_specs_and_the_shape(scm):
    with pytest.raises(ValueError, match=r"S0R -> S2R for shape \(8, 8\)"):
        scm.plan(S("S0R"), S("S2R"), (8, 8), 4)
    with pytest.raises(ValueError, match=r"S0R -> S01R for shape \(2, 8\)"):
        scm.cost(S("S0R"), S("S01R"), (2, 8), 4)


# ---- tier 2: real collectives on gloo ----------------------------------------------------------
def _coords(cluster):
    return [cluster.coord(r) for r in range(cluster.world_size)]


def _represent(full: torch.Tensor, spec: ShardingSpec, sum_axes, cluster, coord, seed: int) -> torch.Tensor:
    """This rank's piece of ``full`` in ``spec``; over ``sum_axes`` random pieces that sum to the slice."""
    local = full[spec.local_slices(full.shape, cluster.mesh_shape, coord)]
    m = math.prod(cluster.mesh_shape[a] for a in sum_axes)
    k = 0
    for a in sum_axes:
        k = k * cluster.mesh_shape[a] + coord[a]
    z = torch.randn((m, *local.shape), generator=torch.Generator().manual_seed(seed), dtype=full.dtype)
    return local / m + z[k] - z.mean(0) if m > 1 else local.clone()


def _pairs_in_world(rank, world_size, preset, shape):
    """Every (src, dst): consistent forward + backward, and a random-input adjoint run."""
    from autopar.runtime.mesh import RuntimeMesh

    cluster = ClusterInfo.preset(preset)
    mesh, scm = RuntimeMesh(cluster), ShapeConsistencyManager(cluster)
    coord, specs = mesh.coord, all_specs(shape, cluster.mesh_shape)
    X = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = {}
    for i, (src, dst) in enumerate(itertools.product(specs, specs)):
        replicated = [a for a in range(cluster.ndim) if a not in dst.used_axes()]
        x = _represent(X, src, src.partial, cluster, coord, seed=100 + i).requires_grad_()
        y = scm.apply(x, src, dst, shape, mesh)
        y.backward(_represent(G, dst, replicated, cluster, coord, seed=200 + i))  # G in dst's grad convention
        # adjoint identity on random, inconsistent per-rank inputs (float64: tight tolerance)
        gen = torch.Generator().manual_seed(1000 * i + rank)
        local_shape = src.local_shape(shape, cluster.mesh_shape)  # built transposed: a non-contiguous input
        xr = torch.randn(local_shape[::-1], generator=gen, dtype=torch.float64).permute(*reversed(range(len(shape))))
        xr = xr.detach().requires_grad_()
        yr = scm.apply(xr, src, dst, shape, mesh)
        gr = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
        yr.backward(gr)
        out[f"{src}->{dst}"] = (y.detach(), x.grad, float((gr * yr).sum()), float((xr.grad * xr).sum()))
    for spec in specs:  # shard / gather round trip, and the dtypes the collectives must carry
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
            full = (torch.arange(math.prod(shape)).reshape(shape) % 17).to(dtype)
            out[f"roundtrip {spec} {dtype}"] = scm.gather(scm.shard(full, spec, mesh), spec, shape, mesh)
    return out


def _sum_over(values, cluster, axes, rank):
    """Sum of the per-rank tensors over the ranks that differ from ``rank`` only on ``axes``."""
    coords, me = _coords(cluster), cluster.coord(rank)
    return sum(values[r] for r, c in enumerate(coords) if all(c[a] == me[a] for a in range(cluster.ndim)
                                                               if a not in axes))


def _check_pairs(results, preset, shape) -> list[str]:
    cluster = ClusterInfo.preset(preset)
    X = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    specs, failures = all_specs(shape, cluster.mesh_shape), []
    for src, dst in itertools.product(specs, specs):
        key = f"{src}->{dst}"
        ys, grads, lhs, rhs = zip(*(res[key] for res in results))
        src_replicated = [a for a in range(cluster.ndim) if a not in src.used_axes()]
        for r, coord in enumerate(_coords(cluster)):
            want = X[dst.local_slices(shape, cluster.mesh_shape, coord)]
            if not torch.allclose(_sum_over(ys, cluster, dst.partial, r), want, rtol=1e-5, atol=1e-5):
                failures.append(f"{key}: forward value wrong on rank {r}")
            want = G[src.local_slices(shape, cluster.mesh_shape, coord)]
            if not torch.allclose(_sum_over(grads, cluster, src_replicated, r), want, rtol=1e-5, atol=1e-5):
                failures.append(f"{key}: global gradient not recovered on rank {r}")
        if not math.isclose(sum(lhs), sum(rhs), rel_tol=1e-9, abs_tol=1e-9):
            failures.append(f"{key}: adjoint identity fails: {sum(lhs)} != {sum(rhs)}")
    for spec in specs:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
            full = (torch.arange(math.prod(shape)).reshape(shape) % 17).to(dtype)
            for r, res in enumerate(results):
                got = res[f"roundtrip {spec} {dtype}"]
                if got.dtype != dtype or not torch.equal(got, full):
                    failures.append(f"gather(shard(x, {spec})) != x for {dtype} on rank {r}")
    return failures


def test_every_pair_on_a_2x2_mesh_forward_and_backward():
    results = run_distributed(_pairs_in_world, 4, "cpu:2x2", (8, 8), timeout=180)
    failures = _check_pairs(results, "cpu:2x2", (8, 8))
    assert len(results[0]) == 16 * 16 + 16 * 4
    assert not failures, f"{len(failures)} failures, first: " + "\n".join(failures[:10])


def _meshes_of_two(rank, world_size):
    from autopar.runtime.mesh import RuntimeMesh

    out = {preset: _pairs_in_world(rank, world_size, preset, shape)
           for preset, shape in [("cpu:2", (2, 4, 6)), ("cpu:1x2", (4, 6)), ("cpu:2x1", (4, 6))]}
    try:
        RuntimeMesh(ClusterInfo.preset("cpu:2x2"))
    except RuntimeError as e:
        out["wrong world"] = str(e)
    mesh = RuntimeMesh(ClusterInfo.preset("cpu:1x2"))
    out["mesh"] = (mesh.coord, mesh.group(0), mesh.size(1), mesh.world_size, str(mesh.device))
    return out


def test_every_pair_on_1d_and_degenerate_meshes_of_two():
    results = run_distributed(_meshes_of_two, 2, timeout=180)
    for preset, shape in [("cpu:2", (2, 4, 6)), ("cpu:1x2", (4, 6)), ("cpu:2x1", (4, 6))]:
        failures = _check_pairs([res[preset] for res in results], preset, shape)
        assert not failures, f"{preset}: {len(failures)} failures, first: " + "\n".join(failures[:10])
    assert "has 2 ranks but the cluster's mesh 2x2 needs 4" in results[0]["wrong world"]
    assert "torchrun --nproc-per-node 4" in results[0]["wrong world"]
    assert [res["mesh"] for res in results] == [((0, 0), None, 2, 2, "cpu"), ((0, 1), None, 2, 2, "cpu")]
