"""Gradient synchronisation (runtime/grad_sync.py): one all-reduce per chunk in backward, none under no_sync,
the single-device gradients either way; the chunk layout and its cost model."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.distributed import run_distributed


class _Count:
    """Counts torch.distributed.all_reduce calls on each gradient chunk's buffer (and all others)."""

    def __init__(self, module) -> None:
        import torch.distributed as dist

        self.dist, self.real = dist, dist.all_reduce
        self.chunks = {c.grads.data_ptr() if c.grads is not None else None: c for c in module._grad_sync.chunks}
        self.module, self.on_chunks, self.others = module, 0, 0

    def __enter__(self):
        def counted(tensor, *args, **kwargs):
            buffers = {c.grads.data_ptr() for c in self.module._grad_sync.chunks if c.grads is not None}
            if tensor.data_ptr() in buffers:
                self.on_chunks += 1
            else:
                self.others += 1
            return self.real(tensor, *args, **kwargs)

        self.dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        self.dist.all_reduce = self.real


def check_grad_sync(rank: int, world_size: int) -> dict:
    import autopar
    from autopar import zoo
    from tests.test_autoparallelize import ATOL, RTOL

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    cluster = autopar.ClusterInfo.preset(f"cpu:{world_size}")
    # a pure data-parallel plan: every weight replicated, the batch split (batch 4 on 2 ranks)
    ref = copy.deepcopy(model)
    pm = autopar.autoparallelize(model, cluster, inputs, bucket_bytes=32 * 1024)
    chunks = pm._grad_sync.chunks
    assert len(chunks) > 1, "small chunks: several buckets"
    with _Count(pm) as count:
        loss = pm(**inputs).loss
        forward_others = count.others
        loss.backward()
    launches = count.on_chunks
    assert launches == len(chunks), f"{launches} all-reduces on {len(chunks)} chunks"
    ref(**inputs).loss.backward()
    grads = pm.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    # gradient accumulation: two micro-batches, only the second backward reduces
    pm.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    other = {**inputs, "input_ids": torch.roll(inputs["input_ids"], 1, 0), "labels": torch.roll(inputs["labels"], 1, 0)}
    with _Count(pm) as count:
        with pm.no_sync():
            pm(**inputs).loss.backward()
        during = count.on_chunks
        assert all(p.grad is None for p in pm.parameters() if p.requires_grad and pm._grad_sync.slots.get(
            next(n for n, q in pm.named_parameters() if q is p))), "no_sync writes no .grad"
        pm(**other).loss.backward()
    assert during == 0 and count.on_chunks == len(chunks)
    (ref(**inputs).loss + ref(**other).loss).backward()
    grads = pm.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, name=name: f"accumulated {name}: {m}")
    # a .grad kept from the step before (no zero_grad) accumulates the next synchronised gradient
    pm(**inputs).loss.backward()
    ref(**inputs).loss.backward()
    grads = pm.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, name=name: f"kept {name}: {m}")
    # parameters are views of their chunk's flat storage, in execution order within a chunk's axes
    for chunk in chunks:
        for slot in chunk.slots:
            assert slot.param.untyped_storage().data_ptr() == chunk.params.untyped_storage().data_ptr()
    return {"chunks": len(chunks), "forward_others": forward_others, "sizes": pm._grad_sync.sizes()}


def test_one_all_reduce_per_chunk_and_no_sync_accumulates():
    results = run_distributed(check_grad_sync, 2, timeout=300)
    assert results[0]["chunks"] == results[1]["chunks"]
    assert all(s <= 32 * 1024 or s == max(results[0]["sizes"]) for s in results[0]["sizes"])


def test_the_cost_model_prices_one_latency_per_chunk():
    from autopar import ClusterInfo, ShardingSpec
    from autopar.solver.cost_model import grad_sync_time

    cluster = ClusterInfo.preset("cpu:4")
    alpha, beta = cluster.alpha[0], cluster.beta[0]
    ring = 2 * 3 / 4
    small, big = 1024.0, 100 * 2**20
    bucket = 25 * 2**20
    R = ShardingSpec.replicate(1)
    assert grad_sync_time(small, R, cluster, bucket) == pytest.approx(alpha * small / bucket + ring * small * beta)
    assert grad_sync_time(big, R, cluster, bucket) == pytest.approx(alpha + ring * big * beta)
    assert grad_sync_time(small, ShardingSpec.parse("S0"), cluster, bucket) == 0  # sharded on the only axis
