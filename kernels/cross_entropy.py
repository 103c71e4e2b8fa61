"""Cross-entropy over large vocabularies without materialising the softmax, beside its reference.

Per row i with logits x (length V) and target t_i:
``loss_i = logsumexp(x) - x[t_i]`` (0 when ``t_i == ignore_index``). The forward walks the
vocabulary in blocks keeping a per-lane online (max, sum) in base 2:
``m' = max(m, z)``, ``s' = s * 2^(m - m') + 2^(z - m')`` with ``z = x * log2(e)``, and saves
``lse_i`` (natural log). The backward recomputes the softmax blockwise:
``dx_ij = g_i * (exp(x_ij - lse_i) - [j == t_i])`` with ``g_i`` the gradient of loss_i
(0 for ignored rows). Reductions are done in torch on the per-row losses:
"mean" = sum(loss) / #non-ignored rows (as F.cross_entropy), "sum", "none".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import next_pow2, runnable, tl, triton

MAX_BLOCK = 4096


def cross_entropy_reference(logits, target, ignore_index: int = -100, reduction: str = "mean"):
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)


@triton.jit
def _ce_fwd(X, T, Loss, Lse, stride_x, n_cols, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)  # finite floor: -inf lanes add 2^-inf = 0, never NaN
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        ok = start + cols < n_cols
        z = tl.load(x_row + start + cols, mask=ok, other=float("-inf")).to(tl.float32) * 1.4426950408889634
        m_new = tl.maximum(m, z)
        s = s * tl.math.exp2(m - m_new) + tl.math.exp2(z - m_new)
        m = m_new
    m_all = tl.max(m, 0)
    total = tl.sum(s * tl.math.exp2(m - m_all), 0)
    lse = (m_all + tl.math.log2(total)) * 0.6931471805599453  # back to natural log
    t = tl.load(T + row)
    valid = t != ignore_index
    x_t = tl.load(x_row + tl.where(valid, t, 0)).to(tl.float32)
    tl.store(Lse + row, lse)
    tl.store(Loss + row, tl.where(valid, lse - x_t, 0.0))


@triton.jit
def _ce_bwd(X, T, G, Lse, DX, stride_x, stride_dx, n_cols, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, dx_row = X + row * stride_x, DX + row * stride_dx
    t = tl.load(T + row)
    g = tl.where(t != ignore_index, tl.load(G + row).to(tl.float32), 0.0)
    lse2 = tl.load(Lse + row) * 1.4426950408889634
    cols = tl.arange(0, BLOCK)
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        ok = offs < n_cols
        z = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32) * 1.4426950408889634
        p = tl.math.exp2(z - lse2)
        dx = g * (p - tl.where(offs == t, 1.0, 0.0))
        tl.store(dx_row + offs, dx.to(DX.dtype.element_ty), mask=ok)


def _launch(n: int):
    block = min(next_pow2(n), MAX_BLOCK)
    return block, 4 if block <= 1024 else 8


class _RowLosses(torch.autograd.Function):
    """Per-row losses (fp32, 0 for ignored rows) of 2-d logits; the reduction happens outside."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index: int):
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        target = target.contiguous()
        rows, n = logits.shape
        loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
        lse = torch.empty(rows, device=logits.device, dtype=torch.float32)
        block, warps = _launch(n)
        _ce_fwd[(rows,)](logits, target, loss, lse, logits.stride(0), n, ignore_index, BLOCK=block, num_warps=warps)
        ctx.save_for_backward(logits, target, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        rows, n = logits.shape
        grad = grad.contiguous()
        dx = torch.empty((rows, n), device=logits.device, dtype=logits.dtype)
        block, warps = _launch(n)
        _ce_bwd[(rows,)](logits, target, grad, lse, dx, logits.stride(0), dx.stride(0), n, ctx.ignore_index,
                         BLOCK=block, num_warps=warps)
        return dx, None, None


def cross_entropy(logits, target, ignore_index: int = -100, reduction: str = "mean"):
    """F.cross_entropy for class-index targets, computed blockwise over the vocabulary.

    logits (N, V) float, target (N,) int; ``reduction`` "mean" (over non-ignored targets; NaN if
    none), "sum" or "none". Equal to ``F.cross_entropy(logits, target, ignore_index=...,
    reduction=...)``; targets must lie in [0, V) or equal ignore_index (not checked on the GPU).
    Falls back to ``F.cross_entropy`` for inputs the kernel does not support: CPU tensors unless
    the kernels were imported with TRITON_INTERPRET=1, logits that are not 2-d (e.g. (N, C, d)),
    probability (float) targets, empty batches, unknown reductions.
    """
    ok = runnable(logits, target) and logits.dim() == 2 and target.dim() == 1 and logits.is_floating_point()
    ok = ok and not target.is_floating_point() and logits.shape[0] == target.shape[0] > 0 and logits.shape[1] > 0
    if not ok or reduction not in ("mean", "sum", "none"):
        return cross_entropy_reference(logits, target, ignore_index, reduction)
    loss = _RowLosses.apply(logits, target, int(ignore_index))
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / (target != ignore_index).sum()).to(logits.dtype)
