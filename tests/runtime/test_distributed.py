"""tests/distributed.py: the harness fails loudly instead of hanging."""
from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import DistributedTestError, run_distributed


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("rank one says no")
    dist.all_reduce(torch.ones(1))  # rank 0 waits here on a collective rank 1 never joins
    return rank


def _hang_on_rank_one(rank, world_size):
    if rank == 1:
        time.sleep(600)
    return rank


def test_a_failing_rank_raises_with_its_traceback_and_the_others_are_killed():
    with pytest.raises(DistributedTestError, match=r"(?s)rank 1 of 2 failed.*ValueError: rank one says no"):
        run_distributed(_fail_on_rank_one, 2, timeout=60)


def test_a_hung_rank_fails_at_the_timeout():
    start = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"ran past 10 s; ranks \[(0, )?1\]"):
        run_distributed(_hang_on_rank_one, 2, timeout=10)
    assert time.monotonic() - start < 25
