"""3-D meshes: strategies, resharding and the ILP on a 2x2x2 mesh."""
from __future__ import annotations

import itertools

from autopar import ClusterInfo, ShardingSpec
from autopar.runtime.shape_consistency import ShapeConsistencyManager
from autopar.solver.build import build_strategies
from autopar.solver.ilp import solve
from tests.solver.conftest import traced_mlp

MESH3 = ClusterInfo.preset("2x2x2xH100")


def _specs_2d(mesh_shape):
    """Every spec of a 2-D tensor on the mesh: each axis splits dim 0, dim 1, is partial, or replicates."""
    out = set()
    for places in itertools.product(["R", 0, 1, "P"], repeat=len(mesh_shape)):
        shard = {a: p for a, p in enumerate(places) if isinstance(p, int)}
        partial = [a for a, p in enumerate(places) if p == "P"]
        out.add(ShardingSpec.from_axis_map(2, shard, partial))
    return sorted(out, key=str)


def test_resharding_plan_exists_for_every_pair_of_3d_specs():
    scm = ShapeConsistencyManager(MESH3)
    specs = _specs_2d(MESH3.mesh_shape)
    assert len(specs) > 40
    for src, dst in itertools.product(specs, specs):
        if dst.partial and src != dst and not src.partial:
            continue  # a partial target is only met by itself (nothing turns whole into partial but to_partial)
        cost = scm.cost(src, dst, (16, 16), 4)
        assert cost >= 0 and (cost > 0) == (src != dst), (str(src), str(dst))


def test_linear_strategies_on_a_3d_mesh():
    sg = build_strategies(traced_mlp(8, 64), MESH3)
    linear = next(n for n in sg.nodes if n.name == "linear")
    assert len(linear.meta["strategies"]) == 5 ** 3  # one of 5 options per axis, all dividing
    assert any(str(s) == "S012R = S012R x RR x R" for s in linear.meta["strategies"])


def test_mlp_on_2x2x2_rediscovers_data_parallel_and_megatron():
    cpu8 = ClusterInfo.preset("cpu:2x2x2")
    # Large batch: the batch splits over (at least) two of the three axes; the weights are used whole on those
    # (stored whole, or split there and gathered in a bucket: ZeRO's all-gather + reduce-scatter move the bytes
    # of the all-reduce they replace, and the bucket shares the latency)
    dp = solve(build_strategies(traced_mlp(4096, 64, loss=True), cpu8), cpu8)
    linear = dp.strategy_of("linear")
    assert str(linear).startswith("S01"), str(linear)
    assert str(linear.inputs[1]) in ("RR", "RS2", "S2R"), str(linear)
    # Batch 8, hidden 4096: column-then-row over the mesh, weights never replicated.
    mp = solve(build_strategies(traced_mlp(8, 4096), cpu8), cpu8)
    w1, w2 = mp.strategy_of("fc1_weight").output, mp.strategy_of("fc2_weight").output
    assert w1.dims[0] and w2.dims[1], (str(w1), str(w2))  # fc1 column-parallel, fc2 row-parallel (on its input dim)
    assert len(w1.used_axes()) == len(w2.used_axes()) == 3  # every weight split over all 8 devices
    assert mp.status == "optimal" and mp.peak_memory <= cpu8.memory_per_device


def test_the_all_pairs_table_gives_dijkstras_seconds_bit_for_bit(monkeypatch):
    """``costs`` reads an all-pairs table (scipy's Dijkstra, or the Python fallback without scipy) where it
    once ran one Python Dijkstra per source: every pair's seconds are the same float."""
    import builtins

    shapes = [((16, 16), 4), ((8, 4, 6), 2), ((8, 12, 16, 4), 4), ((3, 5), 4), ((0, 8), 4)]  # (0, 8): 0 s arcs
    with_scipy = ShapeConsistencyManager(MESH3)
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    for shape, size in shapes:
        index, _ = with_scipy._table(shape, size)
        specs = list(index)
        assert len(specs) > (1 if shape == (3, 5) else 20)
        for src in specs:
            dist, _ = with_scipy._tree(src, shape, size)
            assert set(dist) == set(specs)  # strongly connected: the table has every spec that fits
            assert with_scipy.costs(src, specs, shape, size) == [dist[d] for d in specs]
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    plain = ShapeConsistencyManager(MESH3)
    for shape, size in shapes:
        specs = list(with_scipy._table(shape, size)[0])
        for src in specs[:10]:
            assert plain.costs(src, specs, shape, size) == with_scipy.costs(src, specs, shape, size)
