"""LayerNorm and RMSNorm over the last dim, forward and backward, beside their torch references.

For a row x of length n (statistics in fp32):

- LayerNorm: ``mu = mean(x)``, ``rstd = 1 / sqrt(mean((x - mu)^2) + eps)``,
  ``xhat = (x - mu) * rstd``, ``y = xhat * w + b``.
- RMSNorm: ``rstd = 1 / sqrt(mean(x^2) + eps)``, ``xhat = x * rstd``, ``y = xhat * w``.

Backward, with ``g = dy * w`` (or ``dy`` without a weight):
``dx = rstd * (g - xhat * mean(g * xhat) - mean(g))`` for LayerNorm (RMSNorm drops the last
term), ``dw = sum_rows dy * xhat``, ``db = sum_rows dy``. The forward runs one program per
row and saves (mu, rstd); the backward runs a fixed number of programs that each loop over
rows and write one partial (dw, db) row, summed afterwards in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import next_pow2, num_programs, runnable, tl, triton


def layer_norm_reference(x, weight=None, bias=None, eps: float = 1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm_reference(x, weight=None, eps: float | None = None):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


@triton.jit
def _norm_fwd(X, Y, W, B, Mean, Rstd, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr, RMS: tl.constexpr,
              HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, 0) / n_cols
        xc = tl.where(ok, x - mean, 0.0)
        tl.store(Mean + row, mean)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / n_cols + eps)
    tl.store(Rstd + row, rstd)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _norm_bwd(X, DY, DX, W, Mean, Rstd, DW, DB, stride_x, stride_dy, stride_dx, n_rows, n_cols,
              BLOCK: tl.constexpr, RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Program p handles rows p, p + P, ...; writes its partial dw, db to row p of DW, DB."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], tl.float32)
    db = tl.zeros([BLOCK], tl.float32)
    for row in range(pid, n_rows, n_prog):
        row64 = tl.cast(row, tl.int64)
        x = tl.load(X + row64 * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row64 * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row64)
        if RMS:
            xhat = x * rstd
        else:
            xhat = tl.where(ok, (x - tl.load(Mean + row64)) * rstd, 0.0)
        g = dy
        if HAS_W:
            g = dy * w
            dw += dy * xhat
        if HAS_B:
            db += dy
        c1 = tl.sum(g * xhat, 0) / n_cols
        if RMS:
            dx = (g - xhat * c1) * rstd
        else:
            dx = (g - xhat * c1 - tl.sum(g, 0) / n_cols) * rstd
        tl.store(DX + row64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=ok)
    if HAS_W:
        tl.store(DW + pid * n_cols + cols, dw, mask=ok)
    if HAS_B:
        tl.store(DB + pid * n_cols + cols, db, mask=ok)


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


class _Norm(torch.autograd.Function):
    """y = norm(x) [* w] [+ b] over the last dim (RMS: no centring, no bias)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, rms: bool):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows, n = x2.shape
        y = torch.empty((rows, n), device=x.device, dtype=x.dtype)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        block = next_pow2(n)
        _norm_fwd[(rows,)](x2, y, weight, bias, mean, rstd, x2.stride(0), y.stride(0), n, eps, BLOCK=block, RMS=rms,
                           HAS_W=weight is not None, HAS_B=bias is not None, num_warps=_warps(block))
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.rms, ctx.shape = rms, shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        rows, n = x2.shape
        dy2 = dy.reshape(-1, n)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty((rows, n), device=x2.device, dtype=x2.dtype)
        block = next_pow2(n)
        progs = max(1, min(rows, num_programs(x2.device, per_sm=2)))
        dw = torch.empty((progs, n), device=x2.device, dtype=torch.float32) if weight is not None else None
        db = torch.empty((progs, n), device=x2.device, dtype=torch.float32) if bias is not None else None
        _norm_bwd[(progs,)](x2, dy2, dx, weight, mean, rstd, dw, db, x2.stride(0), dy2.stride(0), dx.stride(0),
                            rows, n, BLOCK=block, RMS=ctx.rms, HAS_W=weight is not None, HAS_B=bias is not None,
                            num_warps=_warps(block))
        dweight = dw.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = db.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.view(ctx.shape), dweight, dbias, None, None


def _supported(x, weight, bias) -> bool:
    if not runnable(x, weight, bias) or x.dim() == 0 or x.numel() == 0:
        return False
    n = x.shape[-1]
    params_ok = all(p is None or (p.shape == (n,) and p.is_contiguous()) for p in (weight, bias))
    return params_ok and x.is_floating_point() and n * x.element_size() <= 65536


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5):
    """LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias, with backward.

    ``weight``/``bias`` may be None. Equal to ``F.layer_norm(x, (x.shape[-1],), weight, bias, eps)``.
    Falls back to ``F.layer_norm`` for inputs the kernel does not support: CPU tensors unless the
    kernels were imported with TRITON_INTERPRET=1, rows longer than 64 KiB (e.g. > 32768 bf16
    values), weight/bias not of shape (n,).
    """
    if not _supported(x, weight, bias):
        return layer_norm_reference(x, weight, bias, eps)
    return _Norm.apply(x, weight, bias, float(eps), False)


def rms_norm(x, weight=None, eps: float | None = None):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight, with backward.

    ``eps`` None means ``torch.finfo(x.dtype).eps`` (as ``F.rms_norm``). Equal to
    ``F.rms_norm(x, (x.shape[-1],), weight, eps)``. Falls back to ``F.rms_norm`` for inputs the
    kernel does not support (as ``layer_norm``).
    """
    if eps is None:
        eps = torch.finfo(x.dtype).eps if x.is_floating_point() else 1e-6
    if not _supported(x, weight, None):
        return rms_norm_reference(x, weight, eps)
    return _Norm.apply(x, weight, None, float(eps), True)
