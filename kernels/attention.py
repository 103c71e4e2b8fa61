"""Fused attention (FlashAttention-2 style), forward and backward, beside its torch reference.

For one (batch, head): S = scale * Q K^T (m x n), P = softmax(S) row-wise, O = P V.
The forward walks key blocks with an online softmax, never holding S whole: for each block
``m' = max(m, rowmax(S_j))``, ``l = l * 2^(m - m') + rowsum(2^(S_j - m'))``,
``acc = acc * 2^(m - m') + 2^(S_j - m') V_j`` (scores in base-2 units: S * log2(e)), then
``O = acc / l`` and it saves ``L = m + log2(l)`` per row (the base-2 logsumexp).
The backward recomputes ``P = 2^(S log2 e - L)`` blockwise:
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``
(a preprocessing kernel), ``dQ = scale * dS K``, ``dK = scale * dS^T Q``.
One kernel owns a key block and loops over query blocks (dK, dV); another owns a query
block and loops over key blocks (dQ): no atomics. Causal is torch's top-left mask
(query i sees keys j <= i); blocks above the diagonal are skipped, blocks on it masked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import INTERPRETED, LOG2E, dot, runnable, tl, triton, upcast_dots


def attention_reference(q, k, v, causal: bool = False, scale: float | None = None):
    """softmax(scale * q k^T [+ causal mask]) v in plain torch (fp32 math for half inputs)."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal,
                                          scale=scale).to(q.dtype)


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skn, svn, offs_m, offs_d, lo, hi, N, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
               PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax over key blocks [lo, hi); MASK applies the key-tail and causal masks."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptr = k_base + offs_n[:, None] * skn + offs_d[None, :]
        v_ptr = v_base + offs_n[:, None] * svn + offs_d[None, :]
        if MASK:
            k = tl.load(k_ptr, mask=offs_n[:, None] < N, other=0.0)
        else:
            k = tl.load(k_ptr)
        s = dot(q, tl.trans(k), PREC, UPCAST) * qk_scale  # (BM, BN), base-2 units
        if MASK:
            ok = offs_n[None, :] < N
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_ptr, mask=offs_n[:, None] < N, other=0.0)
        else:
            v = tl.load(v_ptr)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _key_ranges(start_m, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key blocks of query block start_m: [0, n_full) needs no mask, [n_full, hi) does."""
    if CAUSAL:
        hi = tl.minimum(N, start_m + BLOCK_M)
        n_full = tl.minimum((start_m + 1) // BLOCK_N, N // BLOCK_N) * BLOCK_N
    else:
        hi = N
        n_full = (N // BLOCK_N) * BLOCK_N
    return n_full, hi


@triton.jit
def _attn_fwd(Q, K, V, Out, L, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, H, M, N, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # causal: longest rows first
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ok = offs_m[:, None] < M
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full, hi = _key_ranges(start_m, M, N, BLOCK_M, BLOCK_N, CAUSAL)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skn, svn, offs_m, offs_d, 0, n_full, N, qk_scale,
                               BLOCK_N, HEAD_DIM, CAUSAL, False, PREC, UPCAST)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skn, svn, offs_m, offs_d, n_full, hi, N, qk_scale,
                               BLOCK_N, HEAD_DIM, CAUSAL, True, PREC, UPCAST)
    acc = acc / l_i[:, None]
    tl.store(Out + bh * M * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc.to(Out.dtype.element_ty),
             mask=q_ok)
    tl.store(L + bh * M + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < M)


@triton.jit
def _bwd_delta(Out, DO, Delta, M, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO[i, d] * O[i, d] (fp32), over contiguous (B*H, M, HEAD_DIM)."""
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m[:, None] < M
    off = bh * M * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + off, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=ok, other=0.0).to(tl.float32)
    tl.store(Delta + bh * M + offs_m, tl.sum(o * do, 1), mask=offs_m < M)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, d_base, sqm, offs_n, offs_d, lo, hi, M, qk_scale,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [lo, hi) (transposed scores: (BN, BM))."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        lse = tl.load(l_base + offs_m, mask=m_ok, other=float("inf"))  # inf: rows past M get p = 0
        p_t = tl.math.exp2(dot(k, tl.trans(q), PREC, UPCAST) * qk_scale - lse[None, :])
        if MASK:  # causal: key j is seen by query i only when j <= i
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :], p_t, 0.0)
        do = tl.load(do_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        dv += dot(p_t.to(do.dtype), do, PREC, UPCAST)
        delta = tl.load(d_base + offs_m, mask=m_ok, other=0.0)
        dp_t = dot(v, tl.trans(do), PREC, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += dot(ds_t.to(q.dtype), q, PREC, UPCAST)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, L, Delta, DK, DV, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, H, M, N,
                   sm_scale, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_ok = offs_n[:, None] < N
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    q_base, do_base = Q + b * sqb + h * sqh, DO + bh * M * HEAD_DIM
    l_base, d_base = L + bh * M, Delta + bh * M
    lo, m_full = 0, 0
    if CAUSAL:  # query blocks before the key block see none of it; the diagonal ones see part of it
        lo = (start_n // BLOCK_M) * BLOCK_M
        m_full = tl.minimum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, tl.cdiv(M, BLOCK_M) * BLOCK_M)
        m_full = tl.maximum(m_full, lo)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, d_base, sqm, offs_n, offs_d, lo, m_full, M,
                             qk_scale, BLOCK_M, HEAD_DIM, True, PREC, UPCAST)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, d_base, sqm, offs_n, offs_d, m_full, M, M,
                         qk_scale, BLOCK_M, HEAD_DIM, False, PREC, UPCAST)
    out = bh * N * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_d, lo, hi, N, qk_scale,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
              PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Accumulate dQ (without the scale) of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptr = k_base + offs_n[:, None] * skn + offs_d[None, :]
        v_ptr = v_base + offs_n[:, None] * svn + offs_d[None, :]
        if MASK:
            k = tl.load(k_ptr, mask=offs_n[:, None] < N, other=0.0)
            v = tl.load(v_ptr, mask=offs_n[:, None] < N, other=0.0)
        else:
            k = tl.load(k_ptr)
            v = tl.load(v_ptr)
        p = tl.math.exp2(dot(q, tl.trans(k), PREC, UPCAST) * qk_scale - lse[:, None])
        if MASK:
            ok = offs_n[None, :] < N
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(ok, p, 0.0)
        dp = dot(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, PREC, UPCAST)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, L, Delta, DQ, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, H, M, N,
                 sm_scale, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # causal: longest rows first
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < M
    q_ok = m_ok[:, None]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    o_off = bh * M * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    do = tl.load(DO + o_off, mask=q_ok, other=0.0)
    lse = tl.load(L + bh * M + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(Delta + bh * M + offs_m, mask=m_ok, other=0.0)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full, hi = _key_ranges(start_m, M, N, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_d, 0, n_full, N, qk_scale,
                   BLOCK_N, HEAD_DIM, CAUSAL, False, PREC, UPCAST)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_d, n_full, hi, N, qk_scale,
                   BLOCK_N, HEAD_DIM, CAUSAL, True, PREC, UPCAST)
    tl.store(DQ + o_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_ok)


def _configs(head_dim: int) -> dict:
    """Block sizes and launch options: (BLOCK_M, BLOCK_N, warps, stages) per kernel."""
    if INTERPRETED:  # small blocks exercise the multi-block paths on small test shapes, one config
        return {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
    if head_dim <= 64:
        return {"fwd": (128, 64, 4, 3), "dkdv": (32, 128, 4, 3), "dq": (128, 32, 4, 3)}
    return {"fwd": (128, 64, 8, 3), "dkdv": (32, 64, 4, 3), "dq": (64, 32, 4, 3)}


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class FlashAttention(torch.autograd.Function):
    """O = softmax(scale q k^T) v with the Triton kernels; saves q, k, v, O and the logsumexp."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        B, H, M, D = q.shape
        N = k.shape[2]
        o = torch.empty((B, H, M, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B, H, M), device=q.device, dtype=torch.float32)
        bm, bn, warps, stages = _configs(D)["fwd"]
        prec = "ieee" if q.dtype == torch.float32 else "default"
        _attn_fwd[(triton.cdiv(M, bm), B * H)](
            q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), H, M, N, scale * LOG2E,
            HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
            PREC=prec, UPCAST=upcast_dots(q.dtype), num_warps=warps, num_stages=stages)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = do.contiguous()
        B, H, M, D = q.shape
        N = k.shape[2]
        delta = torch.empty_like(lse)
        _bwd_delta[(triton.cdiv(M, 64), B * H)](o, do, delta, M, HEAD_DIM=D, BLOCK_M=64)
        dq = torch.empty((B, H, M, D), device=q.device, dtype=q.dtype)
        dk = torch.empty((B, H, N, D), device=k.device, dtype=k.dtype)
        dv = torch.empty((B, H, N, D), device=v.device, dtype=v.dtype)
        cfg = _configs(D)
        prec = "ieee" if q.dtype == torch.float32 else "default"
        args = (*_strides(q), *_strides(k), *_strides(v), H, M, N, ctx.scale, ctx.scale * LOG2E)
        bm, bn, warps, stages = cfg["dkdv"]
        _attn_bwd_dkdv[(triton.cdiv(N, bn), B * H)](
            q, k, v, do, lse, delta, dk, dv, *args, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn,
            CAUSAL=ctx.causal, PREC=prec, UPCAST=upcast_dots(q.dtype), num_warps=warps, num_stages=stages)
        bm, bn, warps, stages = cfg["dq"]
        _attn_bwd_dq[(triton.cdiv(M, bm), B * H)](
            q, k, v, do, lse, delta, dq, *args, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn,
            CAUSAL=ctx.causal, PREC=prec, UPCAST=upcast_dots(q.dtype), num_warps=warps, num_stages=stages)
        return dq, dk, dv, None, None


def supported(q, k, v) -> bool:
    """Shapes and devices the kernel handles: 4-d (B, H, s, d), same B/H/d/dtype, d in 16/32/64/128."""
    if not runnable(q, k, v) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        return False
    if not (q.dtype == k.dtype == v.dtype) or q.shape[2] == 0 or k.shape[2] == 0:
        return False
    return q.shape[3] in (16, 32, 64, 128)


def flash_attention(q, k, v, causal: bool = False, scale: float | None = None):
    """Fused attention: softmax(scale * q k^T [causal: key j <= query i]) v, with backward.

    q: (batch, heads, m, d); k, v: (batch, heads, n, d); any m, n; fp32, fp16 or bf16;
    ``scale`` defaults to 1/sqrt(d). Equal to ``F.scaled_dot_product_attention(q, k, v,
    is_causal=causal, scale=scale)`` (causal is its top-left mask when m != n).

    Falls back to ``F.scaled_dot_product_attention`` (not the Triton kernel) for inputs the
    kernel does not support: CPU tensors unless the kernels were imported with
    TRITON_INTERPRET=1, head dims other than 16, 32, 64, 128, mismatched shapes or dtypes (e.g. grouped
    query attention), empty sequences.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not supported(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return FlashAttention.apply(q, k, v, bool(causal), float(scale))
