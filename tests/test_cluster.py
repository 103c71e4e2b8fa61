"""ClusterInfo: presets, mesh geometry, validation, logical meshes of a physical topology."""
import dataclasses
import math

import pytest

from autopar.cluster import ClusterInfo, Topology


def test_presets():
    c = ClusterInfo.preset("2x8xH100")
    assert c.mesh_shape == (2, 8) and c.world_size == 16
    assert c.beta[0] > c.beta[1], "the inter-node axis must be slower than NVLink"
    assert ClusterInfo.preset("8xH100").mesh_shape == (8,)
    assert ClusterInfo.preset("cpu:4").device_type == "cpu"
    assert ClusterInfo.preset("cpu:2x2").mesh_shape == (2, 2)


def test_presets_know_their_host_link():
    """What offload pays (solver/offload.py): PCIe Gen5 behind H100/H200, Gen4 behind A100 and consumer cards,
    which also talk to each other over PCIe, not NVLink."""
    sxm, pcie, rtx = (ClusterInfo.preset(n) for n in ("8xH100", "8xH100PCIe", "1xRTX3090"))
    assert sxm.host_bandwidth == pcie.host_bandwidth == 50e9 and rtx.host_bandwidth == 25e9
    assert rtx.memory_per_device == 24 * 2**30 and rtx.world_size == 1
    assert pcie.beta[0] > sxm.beta[0], "cards without NVLink pay PCIe between them"
    assert ClusterInfo.preset("2x4xRTX4090").topology.per_node == 4
    assert "host link 25 GB/s" in rtx.describe()
    assert ClusterInfo.physical(2, 8, "A100").host_bandwidth == 25e9


def test_mesh_geometry_is_row_major():
    c = ClusterInfo.preset("cpu:2x2")
    assert [c.coord(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert c.axis_groups(0) == [[0, 2], [1, 3]]
    assert c.axis_groups(1) == [[0, 1], [2, 3]]
    assert all(c.rank_of(c.coord(r)) == r for r in range(4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mesh_shape=(0, 2)), "mesh_shape"),
    (dict(memory_per_device=-1), "memory_per_device"),
    (dict(alpha=(1e-5,)), "one value per mesh axis"),
    (dict(host_bandwidth=0), "host_bandwidth"),
])
def test_invalid_values_raise(kwargs, match):
    base = dict(mesh_shape=(2, 2), memory_per_device=1e9, peak_flops=1e12, peak_flops_fp32=1e12,
                mem_bandwidth=1e11, alpha=(1e-5, 1e-5), beta=(1e-9, 1e-9))
    with pytest.raises(ValueError, match=match):
        ClusterInfo(**{**base, **kwargs})


def test_unknown_preset_says_what_exists():
    with pytest.raises(ValueError, match="8xH100"):
        ClusterInfo.preset("8xV100")


def test_a_logical_mesh_prices_each_axis_by_the_link_its_groups_cross():
    """8 nodes of 8: an axis whose groups stay in a node gets NVLink; one that crosses nodes, wholly or in
    part (16 on 8 per node), the network."""
    c = ClusterInfo.preset("8x8xH100")
    intra, inter = c.topology.intra[1], c.topology.inter[1]
    assert c.topology == Topology(8, 8, c.topology.intra, c.topology.inter) and c.beta == (inter, intra)
    assert c.with_mesh((8, 8)) == c and ClusterInfo.physical(8, 8, "H100") == c
    assert c.with_mesh((32, 2)).beta == (inter, intra)
    assert c.with_mesh((2, 32)).beta == (inter, inter)  # 32 spans 4 nodes
    assert c.with_mesh((4, 4, 4)).beta == (inter, inter, intra)  # the middle 4 spans 2 nodes
    assert c.with_mesh((64,)).beta == (inter,)
    assert ClusterInfo.preset("8xH100").with_mesh((2, 4)).beta == (intra, intra)  # one node
    with pytest.raises(ValueError, match="has 16 devices"):
        c.with_mesh((4, 4))


def test_meshes_respect_node_boundaries():
    topo = Topology(4, 6, (1e-5, 1e-11), (2e-5, 1e-10))  # 4 nodes of 6: 24 devices
    meshes = topo.meshes()
    assert (24,) in meshes and (4, 6) in meshes and (12, 2) in meshes and (2, 12) in meshes
    assert (6, 4) not in meshes and (3, 8) not in meshes  # a 4 or an 8 would cut a node of 6 unevenly
    for shape in meshes:
        assert math.prod(shape) == 24 and 1 <= len(shape) <= 3 and min(shape) >= 2
        for a in range(len(shape)):
            span = math.prod(shape[a:])
            assert 6 % span == 0 or span % 6 == 0, shape
    assert len(ClusterInfo.preset("8x8xH100").topology.meshes()) == 16  # 64 = 2^6: 1 + 5 + 10 ordered shapes


def test_measured_links_refit_the_topology():
    topo = ClusterInfo.preset("8x8xH100").topology
    fitted = topo.refit((8, 8), alpha=(3e-5, 2e-6), beta=(1e-10, 1e-12))
    assert fitted.inter == (3e-5, 1e-10) and fitted.intra == (2e-6, 1e-12)
    mixed = topo.refit((2, 32), alpha=(3e-5, 4e-5), beta=(1e-10, 2e-10))  # the 32 mixes both links: fits neither
    assert mixed.inter == (3e-5, 1e-10) and mixed.intra == topo.intra


def test_a_collective_kind_scales_the_axis_link_and_the_resharding_it_prices():
    from autopar.runtime.shape_consistency import ShapeConsistencyManager
    from autopar.spec import ShardingSpec

    base = ClusterInfo.preset("cpu:2")
    slow = dataclasses.replace(base, collectives=(("all_gather", 2.0, 3.0), ("reduce_scatter", 1.0, 5.0)))
    (a,), (b,) = base.alpha, base.beta
    assert slow.link(0) == (a, b) and slow.link(0, "all_to_all") == (a, b)
    assert slow.link(0, "all_gather") == (2 * a, 3 * b) and slow.link(0, "reduce_scatter") == (a, 5 * b)
    # S0 -> R of a (64, 64) fp32 tensor: an all-gather forward, its adjoint reduce-scatter backward,
    # each moving (n-1)/n of the whole 16 KiB
    wire = 0.5 * 64 * 64 * 4
    got = ShapeConsistencyManager(slow).cost(ShardingSpec.parse("S0R"), ShardingSpec.parse("RR"), (64, 64), 4)
    assert got == pytest.approx((2 * a + 3 * b * wire) + (a + 5 * b * wire))
    plain = ShapeConsistencyManager(base).cost(ShardingSpec.parse("S0R"), ShardingSpec.parse("RR"), (64, 64), 4)
    assert plain == pytest.approx(2 * (a + b * wire))
    with pytest.raises(ValueError, match="collectives"):
        dataclasses.replace(base, collectives=(("broadcast", 1.0, 1.0),))


def test_the_link_fit_weighs_small_and_large_collectives_alike():
    from autopar.runtime.profile_links import fit

    sizes = [2.0**k for k in range(10, 25, 2)]
    exact = [3e-4 + s / 1e9 for s in sizes]
    assert fit(sizes, exact) == pytest.approx((3e-4, 1e-9))
    # 20 % noise on the largest size moves a plain least-squares intercept by milliseconds; the relative fit
    # keeps alpha near the small collectives' time
    noisy = exact[:-1] + [exact[-1] * 1.2]
    alpha, _beta = fit(sizes, noisy)
    assert alpha == pytest.approx(3e-4, rel=0.2)
    # a slow spell lifting three sizes' medians 7x (measured here: 3.6 ms for a 0.5 ms all-reduce) leaves the
    # line through the others
    spell = [t * 7 if i in (1, 2, 3) else t for i, t in enumerate(exact)]
    assert fit(sizes, spell) == pytest.approx((3e-4, 1e-9), rel=0.05)


def _profile(rank, world_size):
    cluster = ClusterInfo.preset(f"cpu:{world_size}").profile(sizes=(2**10, 2**16, 2**20), repeats=2)
    return cluster.alpha, cluster.beta, cluster.collectives, cluster.name


def test_profile_measures_every_kind_and_every_rank_plans_with_the_same_numbers():
    from tests.distributed import run_distributed

    results = run_distributed(_profile, 2, timeout=120)
    assert all(r == results[0] for r in results)
    (alpha,), (beta,), collectives, name = results[0]
    assert 0 < alpha < 1 and 0 < beta < 1e-6 and name == "cpu:2 (profiled)"
    assert {k for k, _a, _b in collectives} <= {"all_gather", "reduce_scatter", "all_to_all"}
    assert all(a > 0 and b > 0 for _k, a, b in collectives)


def test_measured_collective_factors_survive_a_saved_plan_and_are_described():
    import json

    from autopar.solver.full_plan import cluster_from_json, cluster_json

    measured = dataclasses.replace(ClusterInfo.preset("cpu:2"), collectives=(("reduce_scatter", 0.9, 4.2),))
    assert cluster_from_json(json.loads(json.dumps(cluster_json(measured)))) == measured
    assert "reduce-scatter x0.9 latency, x4.2 per byte" in measured.describe()
    assert "50 us + 2 GB/s" in measured.describe()
