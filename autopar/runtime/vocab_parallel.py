"""Vocabulary parallelism: an embedding and a cross-entropy whose vocabulary is split over mesh axes.

Vocabulary-parallel embedding. W (V, h) is split on dim 0 over the vocab axes: this rank holds
rows [start, start + V_loc). For ids x (...):

    y_r[i] = W_r[x_i - start]  if start <= x_i < start + V_loc  else 0        (..., h)
    y      = sum_r y_r = W[x]                                                 (a partial sum)

so the output is partial (``+P``) over the vocab axes; the resharding that follows all-reduces it
where a consumer needs it whole. Backward is the local embedding backward of the masked lookup:
dW_r[v - start] = sum_{i: x_i = v} g_i for the rows this rank owns, nothing elsewhere (the zeroed
outputs send no gradient to the row they were masked to).

Vocabulary-parallel cross-entropy, without gathering the logits. Logits x (N, C) split on the class
dim over the vocab axes (rank r holds classes [start, start + C_loc)), target t (N,) replicated there;
N may also be split over batch axes. Per row i, with two all-reduces over the vocab axes (N floats,
then 2N: s and z travel together):

    m_i  = max_r max_c x_r[i, c]                                 (all-reduce MAX)
    s_i  = sum_r sum_c exp(x_r[i, c] - m_i)                      (all-reduce SUM)
    z_i  = sum_r x_r[i, t_i - start] [t_i owned by r]            (same all-reduce; 0 everywhere if ignored)
    l_i  = log s_i + m_i - z_i                                   (= -log softmax(x_i)[t_i])

reduction "none" gives l (N,), "sum" gives sum_i l_i, "mean" gives sum_i l_i / K with K the number
of targets != ignore_index (all-reduced over the batch axes, as in ShardedCrossEntropy); ignored rows
give 0 and no gradient. dl_i / dx_r[i, c] = softmax(x_i)[c] - [c = t_i]: computed from the local
exp(x_r - m) / s, no logits cross the wire.

The output spec: replicated (R) on the vocab axes (every rank of a vocab group holds the same loss),
partial (P, for sum/mean) or split on dim 0 (for none) on the batch axes. Under the runtime's exact-
adjoint convention, each rank's gradient of an R tensor is only its own *contribution* g_r; the
objective is O = sum_r O_r(l) with every rank's copy equal to l, so

    dO/dx_c = (sum_{r in vocab group} g_r) * dl/dx_c.

Backward therefore all-reduces (sums) the incoming gradient over the vocab axes first (one scalar,
or N floats for "none") and then applies the local Jacobian: the exact adjoint of "compute l with
all-reduces and give every rank a copy". (Declaring the output partial with l/n per rank would
rely on the consumer sending equal gradients to every rank; the R form makes no such assumption.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _all_reduce(x: torch.Tensor, groups, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In place over each group in turn (max of maxes, sum of sums: the whole vocab group)."""
    for group in groups:
        dist.all_reduce(x, op=op, group=group)
    return x


class VocabParallelEmbedding(torch.nn.Module):
    """``F.embedding`` on this rank's rows [start, start + rows) of a weight split on dim 0; partial output."""

    def __init__(self, start: int, rows: int, vocab: int) -> None:
        super().__init__()
        self.start, self.rows, self.vocab = start, rows, vocab

    def forward(self, ids, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                sparse=False):
        if max_norm is not None or scale_grad_by_freq:
            raise NotImplementedError("vocab-parallel embedding with max_norm or scale_grad_by_freq")
        if weight.shape[0] != self.rows:
            raise ValueError(f"local weight has {weight.shape[0]} rows, the plan expects {self.rows}")
        owned = (ids >= self.start) & (ids < self.start + self.rows)  # (...)
        local_ids = torch.where(owned, ids - self.start, torch.zeros_like(ids))
        local_pad = None
        if padding_idx is not None:
            pad = padding_idx % self.vocab
            local_pad = pad - self.start if self.start <= pad < self.start + self.rows else None
        out = F.embedding(local_ids, weight, padding_idx=local_pad, sparse=sparse)  # (..., h_loc)
        return out * owned.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rows [{self.start}, {self.start + self.rows}) of {self.vocab}"


class _VocabParallelCE(torch.autograd.Function):
    """Forward and backward of the module below; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, logits, target, start, vocab_groups, batch_groups, reduction, ignore_index):
        x = logits.detach()
        n_loc, c_loc = x.shape
        m = _all_reduce(x.max(dim=1).values.clone(), vocab_groups, dist.ReduceOp.MAX)  # (N,)
        e = torch.exp(x - m.unsqueeze(1))  # (N, C_loc)
        owned = (target >= start) & (target < start + c_loc)  # ignore_index (< 0) is owned by no one
        col = torch.where(owned, target - start, torch.zeros_like(target))
        z = x.gather(1, col.unsqueeze(1)).squeeze(1) * owned.to(x.dtype)
        s, z = _all_reduce(torch.stack([e.sum(dim=1), z]), vocab_groups)  # (2, N): one all-reduce for both
        valid = (target != ignore_index).to(x.dtype)
        loss = (torch.log(s) + m - z) * valid  # (N,)
        count = None
        if reduction == "mean":
            count = _all_reduce(valid.sum(), batch_groups)  # non-ignored targets of the global batch
            out = loss.sum() / count
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss
        e.div_(s.unsqueeze(1))  # local softmax, in place
        ctx.save_for_backward(e, col, owned, valid)
        ctx.vocab_groups, ctx.reduction, ctx.count = vocab_groups, reduction, count
        return out

    @staticmethod
    def backward(ctx, g):
        softmax, col, owned, valid = ctx.saved_tensors
        g = _all_reduce(g.contiguous().clone(), ctx.vocab_groups)  # sum the contributions of the vocab group
        if ctx.reduction == "mean":
            w = valid * (g / ctx.count)
        elif ctx.reduction == "sum":
            w = valid * g
        else:
            w = valid * g  # (N,)
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, col] -= owned.to(grad.dtype)  # softmax - onehot, on the classes this rank owns
        grad.mul_(w.unsqueeze(1))
        return grad, None, None, None, None, None, None


class VocabParallelCrossEntropy(torch.nn.Module):
    """``F.cross_entropy`` of logits split on the class dim over ``vocab_axes`` (and on N over ``batch_axes``).

    This rank holds classes [start, start + C_loc). The output is R on the vocab axes and, on the batch
    axes, P (mean/sum) or S(0) (none), like ShardedCrossEntropy.
    """

    def __init__(self, mesh, vocab_axes: tuple[int, ...], batch_axes: tuple[int, ...], start: int) -> None:
        super().__init__()
        self.mesh, self.vocab_axes, self.batch_axes, self.start = mesh, vocab_axes, batch_axes, start

    def _groups(self, axes):
        return [self.mesh.group(a) for a in axes if self.mesh.size(a) > 1]

    def forward(self, logits, target, *args, weight=None, size_average=None, ignore_index=-100, reduce=None,
                reduction="mean", label_smoothing=0.0):
        if args or weight is not None or label_smoothing or size_average is not None or reduce is not None:
            raise NotImplementedError("vocab-parallel cross_entropy takes (logits, target), no class weights, "
                                      "no label smoothing, no legacy size_average/reduce")
        if logits.dim() != 2 or target.dim() != 1:
            raise NotImplementedError(f"vocab-parallel cross_entropy needs (N, C) logits and (N,) class targets, "
                                      f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        return _VocabParallelCE.apply(logits, target, self.start, self._groups(self.vocab_axes),
                                      self._groups(self.batch_axes), reduction, ignore_index)

    def extra_repr(self) -> str:
        return f"vocab_axes={self.vocab_axes}, batch_axes={self.batch_axes}, start={self.start}"
