"""Weights stored split and used whole are gathered in buckets (runtime/param_gather.py): one all-gather per
bucket in forward, one reduce-scatter per bucket in backward, the single-device numbers, and the per-weight
path wherever a bucket cannot go (recomputed regions)."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.distributed import run_distributed


def _stored_split(node, strategy) -> bool:
    """ZeRO-3 by hand: every weight that can be split is stored split (as bench/runtime.py's fsdp plan)."""
    if node.meta.get("op") != "param":
        return True
    return not strategy.output.is_replicated() or all(s.output.is_replicated() for s in node.meta["strategies"])


class _Count:
    """Calls of param_gather's all-gather and reduce-scatter (the buckets' collectives)."""

    def __enter__(self):
        from autopar.runtime import param_gather

        self.module, self.gathers, self.scatters = param_gather, 0, 0
        self.real = param_gather._all_gather_tensor, param_gather._reduce_scatter_tensor

        def gather(*args, **kwargs):
            self.gathers += 1
            return self.real[0](*args, **kwargs)

        def scatter(*args, **kwargs):
            self.scatters += 1
            return self.real[1](*args, **kwargs)

        param_gather._all_gather_tensor, param_gather._reduce_scatter_tensor = gather, scatter
        return self

    def __exit__(self, *exc):
        self.module._all_gather_tensor, self.module._reduce_scatter_tensor = self.real


def check_buckets(rank: int, world_size: int, mesh: str, bucket_bytes: int, mixed: str) -> dict:
    import autopar
    from autopar import zoo
    from autopar.options import PlanOptions
    from autopar.runtime.param_gather import BucketGather
    from autopar.solver.planner import hand_plan
    from autopar.tracer import trace
    from tests.runtime.test_mixed_precision import _close, _joined, _reference
    from tests.test_autoparallelize import train_and_compare

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    cluster = autopar.ClusterInfo.preset(mesh)
    opts = PlanOptions.of(bucket_bytes=bucket_bytes, mixed_precision=mixed)
    plan = hand_plan(trace(model, inputs, compute_dtype=opts.compute_dtype), cluster, opts, _stored_split)
    ref = copy.deepcopy(model)
    pm = autopar.autoparallelize(model, cluster, inputs, plan=plan)
    buckets = [m for m in pm.modules() if isinstance(m, BucketGather)]
    members = sum(len(b.names) for b in buckets)
    with _Count() as count:
        loss = pm(**inputs).loss
        forward = (count.gathers, count.scatters)
        loss.backward()
        backward = (count.gathers - forward[0], count.scatters - forward[1])
    pm.zero_grad(set_to_none=True)
    if mixed is None:
        train_and_compare(ref, pm, inputs, f"gpt2 tiny stored split on {mesh}, buckets of {bucket_bytes} bytes")
    else:  # the single-device model under the same policy (bf16 compute, fp32 master), one step
        want_model = _reference(ref, inputs)
        want_model(**inputs).loss.backward()
        pm(**inputs).loss.backward()
        grads, want = pm.full_grads(), _joined(want_model, lambda p: p.grad)
        for name, g in want.items():
            _close(grads[name], g, f"grad {name} under bf16 with buckets")
    return {"buckets": len(buckets), "members": members, "forward": forward, "backward": backward}


@pytest.mark.parametrize("mesh, bucket_bytes, mixed", [("cpu:2", 1024, None), ("cpu:2x2", 25 * 2**20, "bf16")],
                         ids=["2-small-buckets", "2x2-bf16"])
def test_one_gather_and_one_reduce_scatter_per_bucket(mesh, bucket_bytes, mixed):
    world = 4 if "x" in mesh else 2
    for r in run_distributed(check_buckets, world, mesh, bucket_bytes, mixed, timeout=600):
        assert r["buckets"] >= (2 if bucket_bytes < 2**20 else 1) and r["members"] > r["buckets"], r
        assert r["forward"] == (r["buckets"], 0) and r["backward"] == (0, r["buckets"]), r


def test_buckets_keep_to_the_bytes_and_the_order_of_first_use():
    from autopar.runtime.param_gather import partition

    f32, bf16 = torch.float32, torch.bfloat16
    cands = [("a", 1, 0, 0, f32, 40), ("b", 1, 0, 1, f32, 40), ("c", 1, 1, 0, f32, 40), ("d", 1, 0, 0, bf16, 8),
             ("e", 1, 0, 0, f32, 40), ("f", 1, 1, 0, f32, 40), ("g", 1, 0, 0, f32, 100)]
    buckets = partition(cands, bucket_bytes=100)
    assert [[m[0] for m in b.members] for b in buckets] == [["a", "b"], ["c", "f"]]  # d, e and g alone
    assert [b.index for b in buckets] == [0, 1] and buckets[0].axis == 0 and buckets[1].axis == 1


class _LinearBatchNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn, self.out = torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 8)

    def forward(self, x):
        y = self.fc(x)
        return (self.out(self.bn(y)) ** 2).mean() + (y ** 2).mean()


def check_batch_norm_in_a_bucket(rank: int, world_size: int) -> list[bool]:
    import autopar
    from autopar.options import PlanOptions
    from autopar.runtime.param_gather import BucketGather
    from autopar.solver.planner import hand_plan
    from autopar.tracer import trace
    from tests.test_autoparallelize import train_and_compare

    torch.manual_seed(0)
    model, inputs = _LinearBatchNorm().double(), (torch.randn(2, 3, dtype=torch.float64),)
    torch.nn.init.normal_(model.bn.weight), torch.nn.init.normal_(model.bn.bias)
    cluster = autopar.ClusterInfo.preset(f"cpu:{world_size}")
    plan = hand_plan(trace(model, inputs), cluster, PlanOptions.of(), _stored_split)
    ref = copy.deepcopy(model)
    pm = autopar.autoparallelize(model, cluster, inputs, plan=plan)
    (bucket,) = [m for m in pm.modules() if isinstance(m, BucketGather)]
    assert {"fc_weight", "bn_weight"} <= set(bucket.names), bucket.names
    train_and_compare(ref, pm, inputs, f"Linear, BatchNorm1d weights in one bucket on {world_size} ranks",
                      buffers=True)
    return bucket.names


def test_a_batch_norm_weight_gathered_in_a_bucket_gives_the_single_device_gradients():
    # fuzz seed 6: a bucket's members are strided views of its gathered rows, and torch's CPU batch_norm
    # backward gives wrong input gradients for a strided weight (the Linear before it had wrong weight
    # gradients); ShardedBatchNorm hands batch_norm contiguous affine parameters
    run_distributed(check_batch_norm_in_a_bucket, 4, timeout=300)
