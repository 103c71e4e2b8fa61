"""BatchNorm on sharded inputs: statistics synchronised over the mesh axes that split the batch.

For x of shape (N, C, *S), per channel c, over the n = N * prod(S) positions i (the whole batch):

    mean = sum_i x_i / n            var = sum_i (x_i - mean)^2 / n          (biased, for y)
    xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps),  y = xhat * w + b
    running_mean <- (1 - m) running_mean + m mean
    running_var  <- (1 - m) running_var  + m var * n / (n - 1)             (unbiased)

When dims other than C are split over mesh axes A, every sum over i is a local sum all-reduced
over the groups of A (forward: sum(x) and the count, then sum((x - mean)^2): two passes, no
cancellation). Backward, with the same global sums (the adjoint of the forward):

    dx = w * rstd * (dy - sum_i dy / n - xhat * sum_i (dy * xhat) / n)
    dw = sum_local (dy * xhat),  db = sum_local dy      (this rank's contributions: the gradient hook
                                                          of the replicated w, b sums them over A)

A rank whose x is replicated on some axis holds gradient contributions there; dx is linear in dy
with the same map on those ranks, so contributions stay contributions.

Statistics are computed in the dtype ``torch.nn.BatchNorm`` uses on one device: the input's own for
float32 and float64 (a float64 model keeps float64 statistics), float32 for half and bfloat16 inputs
(PyTorch's batch-norm kernels accumulate reduced-precision inputs in float32, its "opmath" type);
y and dx are returned in the input's dtype (``stat_dtype``).

The running statistics are the stored buffers, in the spec the plan stored them in; they are
converted to the channel layout of x (split on C as x is, replicated elsewhere), updated, and
converted back into the stored buffers in place (no communication when the two specs agree).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn.functional as F

from autopar.spec import ShardingSpec


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype batch norm computes its statistics in for inputs of ``dtype`` (float32 for half precision)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _all_reduce(t: torch.Tensor, groups) -> torch.Tensor:
    for group in groups:
        dist.all_reduce(t, group=group)
    return t


class SyncBatchNormFunction(torch.autograd.Function):
    """(y, mean, var, count) = batch_norm(x, w, b) with statistics summed over ``groups``; see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, groups):
        dims = [d for d in range(x.dim()) if d != 1]
        bshape = [1, x.shape[1]] + [1] * (x.dim() - 2)  # per-channel values broadcast against x
        acc = stat_dtype(x.dtype)
        xf = x.to(acc)
        first = torch.cat([xf.sum(dims), xf.new_full((1,), x.numel() / max(x.shape[1], 1))])
        first = _all_reduce(first, groups)
        total, count = first[:-1], first[-1].clone()
        mean = total / count
        centred = xf - mean.view(bshape)
        var = _all_reduce((centred * centred).sum(dims), groups) / count
        rstd = torch.rsqrt(var + eps)
        xhat = centred * rstd.view(bshape)
        y = xhat
        if weight is not None:
            y = y * weight.to(acc).view(bshape)
        if bias is not None:
            y = y + bias.to(acc).view(bshape)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups, ctx.count, ctx.has_bias = groups, count, bias is not None
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dcount):
        x, weight, mean, rstd = ctx.saved_tensors
        dims = [d for d in range(x.dim()) if d != 1]
        bshape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        acc = stat_dtype(x.dtype)
        dyf = dy.to(acc)
        xhat = (x.to(acc) - mean.view(bshape)) * rstd.view(bshape)
        sum_dy, sum_dy_xhat = dyf.sum(dims), (dyf * xhat).sum(dims)
        dweight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy.to(dy.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            sums = _all_reduce(torch.stack([sum_dy, sum_dy_xhat]), ctx.groups) / ctx.count
            scale = rstd if weight is None else rstd * weight.to(acc)
            dx = (scale.view(bshape) * (dyf - sums[0].view(bshape) - xhat * sums[1].view(bshape))).to(x.dtype)
        return dx, dweight, dbias, None, None


class ShardedBatchNorm(torch.nn.Module):
    """``F.batch_norm`` on this rank's shard of x, with the plan's layouts (see the module docstring).

    ``sync_axes``: the mesh axes splitting the dims of x other than C (their sums are all-reduced in
    training); ``channels``: the layout of per-channel vectors matching x (C split as x's dim 1);
    ``stored``: the specs of the running mean and variance buffers (None where there is none).
    """

    def __init__(self, mesh, sc, num_channels: int, sync_axes: tuple[int, ...], channels: ShardingSpec,
                 stored: tuple[ShardingSpec | None, ShardingSpec | None]) -> None:
        super().__init__()
        self.mesh, self.sc, self.num_channels = mesh, sc, num_channels
        self.groups = [mesh.group(a) for a in sync_axes if mesh.size(a) > 1]
        self.channels, self.stored = channels, stored

    def _convert(self, t, src: ShardingSpec, dst: ShardingSpec):
        """``t`` in ``dst``, never sharing ``t``'s storage: a local split (R -> S) may return a view of the
        buffer, which batch_norm saves for backward while the buffer is written back afterwards."""
        if t is None or src == dst:
            return t
        with torch.no_grad():
            return self.sc.apply(t, src, dst, (self.num_channels,), self.mesh).clone()

    def forward(self, x, running_mean, running_var, weight, bias, training: bool, momentum, eps: float):
        # torch's CPU batch_norm backward gives wrong input gradients for a strided weight (2.14: fuzz seed 6),
        # and a weight gathered in a bucket is a strided view of the bucket's rows (param_gather)
        weight, bias = (t.contiguous() if t is not None else None for t in (weight, bias))
        stored = (running_mean, running_var)
        stats = [self._convert(t, spec, self.channels) for t, spec in zip(stored, self.stored)]
        if not training or not self.groups:
            y = F.batch_norm(x, stats[0], stats[1], weight, bias, training, momentum, eps)
        else:
            y, mean, var, count = SyncBatchNormFunction.apply(x, weight, bias, eps, self.groups)
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp(min=1))
                for t, new in zip(stats, (mean, unbiased)):
                    if t is not None:
                        t.mul_(1 - momentum).add_(new.to(t.dtype), alpha=momentum)
        if training:
            with torch.no_grad():
                for buf, t, spec in zip(stored, stats, self.stored):
                    if buf is not None and t is not buf:
                        buf.copy_(self._convert(t, self.channels, spec))
        return y


def sharded_batch_norm(node: fx.Node, strategy, stored: tuple, mesh, sc) -> ShardedBatchNorm:
    """The runtime module for a canonical ``batch_norm`` node under its chosen strategy; ``stored``: the
    specs its running mean and variance are kept in (None where there is none)."""
    x_spec: ShardingSpec = strategy.inputs[0]
    sync_axes = tuple(sorted(a for d, axes in enumerate(x_spec.dims) if d != 1 for a in axes))
    channels = ShardingSpec((tuple(x_spec.dims[1]),), ())
    return ShardedBatchNorm(mesh, sc, node.meta["tensor"].shape[1], sync_axes, channels, stored)
