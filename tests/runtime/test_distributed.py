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


def _meshes_twice(rank, world_size):
    import threading

    from autopar import ClusterInfo
    from autopar.runtime.mesh import RuntimeMesh

    first = RuntimeMesh(ClusterInfo.preset("cpu:2x2"))
    threads = threading.active_count(), len(__import__("os").listdir("/proc/self/task"))
    again = [RuntimeMesh(ClusterInfo.preset("cpu:2x2")) for _ in range(5)]
    dist.all_reduce(torch.ones(1), group=again[-1].group(1))  # a reused group still works
    after = threading.active_count(), len(__import__("os").listdir("/proc/self/task"))
    return [first.group(a) is m.group(a) for m in again for a in (0, 1)], threads, after


def test_meshes_built_again_reuse_their_process_groups():
    """Each gloo group starts threads of its own: a world that autoparallelizes model after model (the
    fuzzer's) grew to 1,230 threads per rank. The same ranks under the same default group get the same group."""
    for same, before, after in run_distributed(_meshes_twice, 4, timeout=120):
        assert all(same)
        assert after == before
