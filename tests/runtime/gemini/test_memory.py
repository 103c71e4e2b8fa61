"""The simulated device (runtime/gemini/memory.py): tracked bytes follow allocations and frees, views and
in-place results are not new memory, host allocations are not counted, and the cap is checked per op."""
from __future__ import annotations

import pytest
import torch

from autopar.runtime.gemini.memory import DeviceMemoryError, MemStats, TrackedDevice


def test_tracked_bytes_follow_what_ops_allocate_and_free():
    dev = TrackedDevice()
    x = torch.ones(256)  # made outside: not on the device
    with dev:
        y = x * 2  # 1 KiB
        assert dev.allocated() == 1024
        v = y.view(16, 16)  # a view: no new memory
        y.add_(1)  # in place: none either
        assert dev.allocated() == 1024
        z = torch.cat([y, y])  # 2 KiB
        assert dev.allocated() == 3072
        del z
        assert dev.allocated() == 1024 and dev.peak() == 3072
        dev.reset_peak()
        assert dev.peak() == 1024
        with dev.untracked():
            host = y + 1  # host memory
        assert dev.allocated() == 1024
        del y
        assert dev.allocated() == 1024  # the view still holds the storage
        del v
        assert dev.allocated() == 0
    assert host.numel() == 256 and dev.max_allocated == 3072


def test_uploads_count_until_freed_downloads_do_not():
    dev = TrackedDevice()
    host = torch.zeros(100)
    up = dev.upload(host)
    assert dev.allocated() == 400 and dev.on_device(up) and not dev.on_device(host)
    down = dev.download(up)
    del up
    assert dev.allocated() == 0 and not dev.on_device(down)


def test_the_cap_is_asserted_at_the_op_that_goes_over():
    dev = TrackedDevice(cap=2048)
    with dev:
        a = torch.zeros(256)  # 1 KiB
        b = a + 1  # 2 KiB: at the cap
        with pytest.raises(DeviceMemoryError, match=r"holds 3072 bytes after aten\.add\.Tensor, over its cap of 2048"):
            a + b
    assert b.sum() == 256


def test_stats_keep_the_peak_per_event():
    stats = MemStats()
    stats.record(((0, "params"),))
    stats.record(((1, "grads"),))
    stats.sample(0, 10)
    stats.sample(0, 5)
    stats.sample(1, 7)
    assert stats.non_model == [10, 7] and stats.peak() == 10
