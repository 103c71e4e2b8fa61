"""ClusterInfo: presets, mesh geometry, validation."""
import pytest

from autopar.cluster import ClusterInfo


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
