"""Softmax over one dim with an optional additive mask, forward and backward, beside its reference.

Forward, per row z = x + mask (fp32): ``y = exp(z - max(z)) / sum(exp(z - max(z)))``, computed
with exp2 on ``(z - max) * log2(e)``. A row that fits one block is read once; a longer row is
walked twice: first an online (max, sum) pass per lane, ``s' = s * 2^(m - m') + 2^(z - m')``,
then a pass that writes y. Backward: ``dx = y * (dy - sum(dy * y))``; the mask's gradient is
dx summed over its broadcast dims.

The kernels see a (rows, n) view with the softmax dim last. A mask that broadcasts only over
leading dims (e.g. (s, s) for x of shape (b, h, s, s)) is read in place as an (r, n) matrix
with row index ``row % r``; any other broadcast is expanded first.
"""
from __future__ import annotations

import torch

from ._common import next_pow2, runnable, tl, triton

MAX_BLOCK = 8192


def softmax_reference(x, dim: int = -1, mask=None):
    return torch.softmax(x if mask is None else x + mask, dim)


@triton.jit
def _softmax_fwd(X, MASK, Y, stride_x, stride_y, mask_rows, n_cols, BLOCK: tl.constexpr,
                 HAS_MASK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, y_row = X + row * stride_x, Y + row * stride_y
    m_row = MASK + (row % mask_rows) * n_cols
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        ok = cols < n_cols
        z = tl.load(x_row + cols, mask=ok, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            z += tl.load(m_row + cols, mask=ok, other=0.0).to(tl.float32)
        z = z * 1.4426950408889634
        p = tl.math.exp2(z - tl.max(z, 0))
        tl.store(y_row + cols, (p / tl.sum(p, 0)).to(Y.dtype.element_ty), mask=ok)
    else:
        m = tl.full([BLOCK], -1e30, tl.float32)  # finite floor: -inf lanes add 2^-inf = 0, never NaN
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            ok = start + cols < n_cols
            z = tl.load(x_row + start + cols, mask=ok, other=float("-inf")).to(tl.float32)
            if HAS_MASK:
                z += tl.load(m_row + start + cols, mask=ok, other=0.0).to(tl.float32)
            z = z * 1.4426950408889634
            m_new = tl.maximum(m, z)
            s = s * tl.math.exp2(m - m_new) + tl.math.exp2(z - m_new)
            m = m_new
        m_all = tl.max(m, 0)
        total = tl.sum(s * tl.math.exp2(m - m_all), 0)
        for start in range(0, n_cols, BLOCK):
            ok = start + cols < n_cols
            z = tl.load(x_row + start + cols, mask=ok, other=float("-inf")).to(tl.float32)
            if HAS_MASK:
                z += tl.load(m_row + start + cols, mask=ok, other=0.0).to(tl.float32)
            p = tl.math.exp2(z * 1.4426950408889634 - m_all) / total
            tl.store(y_row + start + cols, p.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _softmax_bwd(Y, DY, DX, stride_y, stride_dy, stride_dx, n_cols, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y_row, dy_row, dx_row = Y + row * stride_y, DY + row * stride_dy, DX + row * stride_dx
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        ok = cols < n_cols
        y = tl.load(y_row + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=ok, other=0.0).to(tl.float32)
        dx = y * (dy - tl.sum(y * dy, 0))
        tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=ok)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            ok = start + cols < n_cols
            y = tl.load(y_row + start + cols, mask=ok, other=0.0).to(tl.float32)
            acc += y * tl.load(dy_row + start + cols, mask=ok, other=0.0).to(tl.float32)
        dot = tl.sum(acc, 0)
        for start in range(0, n_cols, BLOCK):
            ok = start + cols < n_cols
            y = tl.load(y_row + start + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + start + cols, mask=ok, other=0.0).to(tl.float32)
            tl.store(dx_row + start + cols, (y * (dy - dot)).to(DX.dtype.element_ty), mask=ok)


def _launch(n: int):
    block = min(next_pow2(n), MAX_BLOCK)
    return block, block >= n, 4 if block <= 1024 else 8 if block <= 4096 else 16


def _mask_rows(mask, x_shape) -> tuple[torch.Tensor, int]:
    """The mask as an (r, n) contiguous matrix read at row ``row % r`` (x already has the dim last)."""
    lead = 0
    while lead < len(x_shape) - 1 and mask.shape[lead] == 1:
        lead += 1
    if tuple(mask.shape[lead:]) != tuple(x_shape[lead:]):  # broadcasts inside: expand it
        mask, lead = mask.expand(x_shape), 0
    m2 = mask.reshape(-1, x_shape[-1]).contiguous()
    return m2, m2.shape[0]


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, dim: int):
        xt = x.movedim(dim, -1)
        moved_shape = xt.shape
        x2 = xt.reshape(-1, moved_shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows, n = x2.shape
        if mask is not None:  # pad to x's rank, softmax dim last, like x
            padded = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape)).movedim(dim, -1)
            m2, mask_rows = _mask_rows(padded, moved_shape)
        else:
            m2, mask_rows = x2, 1
        out_dtype = x.dtype if mask is None else torch.promote_types(x.dtype, mask.dtype)
        y = torch.empty((rows, n), device=x.device, dtype=out_dtype)
        block, one, warps = _launch(n)
        _softmax_fwd[(rows,)](x2, m2, y, x2.stride(0), y.stride(0), mask_rows, n, BLOCK=block,
                              HAS_MASK=mask is not None, ONE_BLOCK=one, num_warps=warps)
        ctx.save_for_backward(y)
        ctx.dim, ctx.moved_shape, ctx.x_dtype = dim, moved_shape, x.dtype
        ctx.mask_shape = None if mask is None else mask.shape
        ctx.mask_dtype = None if mask is None else mask.dtype
        return y.view(moved_shape).movedim(-1, dim)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        rows, n = y.shape
        dy2 = dy.movedim(ctx.dim, -1).reshape(-1, n)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty((rows, n), device=y.device, dtype=ctx.x_dtype)
        block, one, warps = _launch(n)
        _softmax_bwd[(rows,)](y, dy2, dx, y.stride(0), dy2.stride(0), dx.stride(0), n, BLOCK=block, ONE_BLOCK=one,
                              num_warps=warps)
        dx = dx.view(ctx.moved_shape).movedim(-1, ctx.dim)
        dmask = None
        if ctx.mask_shape is not None and ctx.needs_input_grad[1]:
            dmask = dx.sum_to_size(ctx.mask_shape).to(ctx.mask_dtype)
        return dx, dmask, None


def softmax(x, dim: int = -1, mask=None):
    """softmax(x + mask) along ``dim``, with backward (to x, and to the mask if it needs a gradient).

    ``mask`` is additive (0 keeps, -inf drops; a bool mask is *not* accepted: convert it with
    ``torch.where(m, 0, -inf)``) and broadcastable to x. Equal to ``torch.softmax(x + mask, dim)``.
    Falls back to that torch expression for inputs the kernel does not support: CPU tensors
    unless the kernels were imported with TRITON_INTERPRET=1, non-float x or mask, empty tensors,
    a mask that does not broadcast to x's shape. The output dtype is x's promoted with the mask's.
    """
    dim = dim % max(x.dim(), 1)
    ok = runnable(x, mask) and x.is_floating_point() and x.numel() > 0 and x.dim() > 0
    if mask is not None:
        ok = ok and mask.is_floating_point() and mask.dim() <= x.dim()
        ok = ok and torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    if not ok:
        return softmax_reference(x, dim, mask)
    return _Softmax.apply(x, mask, dim)
