"""ClusterInfo: presets, mesh geometry, validation, logical meshes of a physical topology."""
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
