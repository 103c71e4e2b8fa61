"""The loss of a batch-split plan without a rank waiting in forward: the count of valid targets from the whole
target (no all-reduce), the loss's sum over ranks left on the wire while backward runs (``PendingSum``)."""
from __future__ import annotations

import copy

import torch

from tests.distributed import run_distributed


class _FakeWork:
    def __init__(self, buf: torch.Tensor) -> None:
        self.buf, self.waited = buf, 0

    def wait(self) -> None:
        if not self.waited:
            self.buf.mul_(2)  # "the other rank's contribution arrives"
        self.waited += 1


def test_pending_sum_waits_only_when_read():
    from autopar.runtime.collectives import PendingSum

    buf = torch.tensor(1.5)
    work = _FakeWork(buf)
    x = PendingSum(buf, work)
    assert torch.ones_like(x).item() == 1.0 and torch.zeros_like(x).shape == () and not work.waited
    v = x.view(1)  # a view shares the reduction in flight
    assert isinstance(v, PendingSum) and not work.waited
    assert v.tolist() == [3.0] and work.waited == 1
    assert x.item() == 3.0 and float(x + 1) == 4.0 and repr(x) == "tensor(3.)"
    torch.testing.assert_close(x, torch.tensor(3.0))


def test_pending_sum_backward_does_not_wait():
    from autopar.runtime.collectives import AllReduceLaterFwdScaleBwd, PendingSum

    w = torch.randn(3, requires_grad=True)
    works = []

    class _Dist:  # all_reduce as the Function calls it, recording the work
        ReduceOp = torch.distributed.ReduceOp

        @staticmethod
        def all_reduce(t, op=None, group=None, async_op=False):
            assert async_op
            works.append(_FakeWork(t))
            return works[-1]

    import autopar.runtime.collectives as c

    real, c.dist = c.dist, _Dist
    try:
        loss = AllReduceLaterFwdScaleBwd.apply((w * w).sum(), None, 2)
    finally:
        c.dist = real
    assert isinstance(loss, PendingSum) and loss.grad_fn is not None
    loss.backward()
    assert works[0].waited == 0, "backward waited for the loss's sum"
    torch.testing.assert_close(w.grad, 2 * 2 * w.detach())  # the scaled adjoint: n times this rank's
    torch.testing.assert_close(loss.detach(), 2 * (w.detach() ** 2).sum())
    assert works[0].waited == 1


def check_dp_loss(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    import autopar
    from autopar import zoo
    from autopar.runtime.collectives import PendingSum
    from autopar.runtime.localize import ShardedCrossEntropy
    from tests.test_autoparallelize import ATOL, RTOL

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    ref = copy.deepcopy(model)
    pm = autopar.autoparallelize(model, autopar.ClusterInfo.preset(f"cpu:{world_size}"), inputs, outputs="loss")
    ce = [m for m in pm.modules() if isinstance(m, ShardedCrossEntropy)]
    assert len(ce) == 1 and ce[0].count_axes == (), "the labels are whole on every rank: counted without a collective"
    calls, real = [], dist.all_reduce

    def counted(tensor, *args, async_op=False, **kwargs):
        calls.append(async_op)
        return real(tensor, *args, async_op=async_op, **kwargs)

    dist.all_reduce = counted
    try:
        loss = pm(**inputs).loss
    finally:
        dist.all_reduce = real
    assert calls == [True], f"forward's all-reduces (async?): {calls}"
    assert isinstance(loss, PendingSum)
    loss.backward()
    pending_after_backward = loss.work is not None
    expected = ref(**inputs).loss
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=RTOL, atol=ATOL)
    grads = pm.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    return {"pending_after_backward": pending_after_backward, "loss": float(loss)}


def test_a_data_parallel_loss_waits_for_nothing_in_forward():
    results = run_distributed(check_dp_loss, 2, timeout=300)
    assert results[0]["loss"] == results[1]["loss"]
    # backward itself never waited (the gradient sync's wait at its end may have completed the sum already,
    # but nothing called the loss's wait before its value was read)
    assert all(r["pending_after_backward"] for r in results)


def test_the_count_of_a_replicated_target_is_free():
    import torch.fx as fx

    from autopar import ClusterInfo, ShardingSpec
    from autopar.solver.cost_model import cross_entropy_comm

    g = fx.Graph()
    logits, target = g.placeholder("logits"), g.placeholder("target")
    logits.meta["tensor"] = torch.empty(8, 16, device="meta")
    target.meta["tensor"] = torch.empty(8, dtype=torch.long, device="meta")
    ce = g.call_function(torch.nn.functional.cross_entropy, (logits, target), {"reduction": "mean"})
    ce.meta["op"] = "cross_entropy"
    cluster = ClusterInfo.preset("cpu:2")
    S0, S0R = ShardingSpec.parse("S0"), ShardingSpec.parse("S0R")
    assert cross_entropy_comm(ce, (S0R, ShardingSpec.replicate(1)), cluster) == 0
    assert cross_entropy_comm(ce, (S0R, S0), cluster) > 0
