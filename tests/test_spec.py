"""ShardingSpec: notation round-trips, local shapes, DTensor interop."""
import pytest

from autopar.spec import ShardingSpec


@pytest.mark.parametrize("text", ["S0R", "S01R", "RS1+P0", "RR", "S0S1", "()", "()+P01", "RS012"])
def test_notation_round_trips(text):
    spec = ShardingSpec.parse(text)
    assert str(spec) == text
    assert eval(repr(spec), {"ShardingSpec": ShardingSpec}) == spec


@pytest.mark.parametrize("bad", ["S", "X0", "S0+P", "S0S0", "S10R", "R+P0+P1", ""])
def test_bad_notation_is_rejected(bad):
    with pytest.raises(ValueError):
        ShardingSpec.parse(bad)


def test_local_shape_and_slices_follow_axis_order():
    spec = ShardingSpec.parse("S01R")
    assert spec.local_shape((8, 4), (2, 2)) == (2, 4)
    # coord (1, 0) holds piece 1 * 2 + 0 = 2 of dim 0
    assert spec.local_slices((8, 4), (2, 2), (1, 0))[0] == slice(4, 6)
    with pytest.raises(ValueError, match="does not evenly shard"):
        spec.local_shape((6, 4), (2, 2))


def test_dtensor_placements_round_trip():
    from torch.distributed.tensor import Partial, Replicate, Shard

    spec = ShardingSpec.parse("RS1+P0")
    assert spec.to_placements(2) == (Partial(), Shard(1))
    assert ShardingSpec.from_placements([Shard(0), Replicate()], 2) == ShardingSpec.parse("S0R")
    assert ShardingSpec.from_placements(spec.to_placements(2), 2) == spec
