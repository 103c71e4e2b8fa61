"""flash_attention against F.scaled_dot_product_attention: forward, dq, dk, dv."""
import pytest
import torch
import torch.nn.functional as F
from autopar.kernels import attention_reference, flash_attention
from autopar.kernels.attention import FlashAttention

from tests.kernels.helpers import check_grads, rel_err


def sdpa(q, k, v, causal=False, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def qkv(b, h, m, n, d, dtype):
    return [torch.randn(b, h, s, d, dtype=dtype).requires_grad_() for s in (m, n, n)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("b,h,m,n,d", [(1, 2, 77, 77, 32), (2, 1, 128, 128, 64), (1, 1, 50, 90, 64),
                                       (1, 1, 90, 50, 32)], ids=["s77d32", "s128d64", "m50n90", "m90n50"])
def test_fp32_matches_sdpa(b, h, m, n, d, causal):
    check_grads(flash_attention, sdpa, qkv(b, h, m, n, d, torch.float32), torch.float32, causal=causal)


@pytest.mark.parametrize("m,causal", [(48, True), (33, False)])
def test_head_dim_128(m, causal):
    check_grads(flash_attention, sdpa, qkv(1, 1, m, m, 128, torch.float32), torch.float32, causal=causal)


@pytest.mark.parametrize("dtype,d,causal", [(torch.float16, 64, True), (torch.bfloat16, 32, False),
                                            (torch.bfloat16, 128, True)], ids=["fp16d64", "bf16d32", "bf16d128"])
def test_half_precision(dtype, d, causal):
    check_grads(flash_attention, sdpa, qkv(1, 2, 77, 77, d, dtype), dtype, causal=causal)


def test_custom_scale_and_strided_inputs():
    """(batch, seq, heads, dim) tensors transposed to (batch, heads, seq, dim) are read in place."""
    q, k, v = (torch.randn(1, 40, 2, 32).transpose(1, 2).requires_grad_() for _ in range(3))
    check_grads(flash_attention, sdpa, [q, k, v], torch.float32, causal=True, scale=0.3)


def test_runs_the_kernel_not_the_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(FlashAttention, "apply", lambda *a: calls.append(1) or sdpa(*a[:3], a[3], a[4]))
    flash_attention(*qkv(1, 1, 20, 20, 32, torch.float32))
    assert calls


def test_unsupported_head_dim_falls_back():
    q, k, v = qkv(1, 2, 10, 10, 8, torch.float32)
    out = flash_attention(q, k, v, causal=True)
    assert rel_err(out, attention_reference(q, k, v, causal=True)) < 1e-6
    assert type(out.grad_fn).__name__ != "FlashAttentionBackward"


@pytest.mark.parametrize("d,m,n", [(64, 300, 300), (128, 200, 150)], ids=["d64", "d128-m200n150"])
def test_gpu_block_sizes(monkeypatch, d, m, n):
    """The block sizes a GPU uses (BLOCK_M 128, BLOCK_N 64, ...) on several blocks, causal."""
    import importlib

    attention = importlib.import_module("autopar.kernels.attention")
    monkeypatch.setattr(attention, "INTERPRETED", False)
    gpu = attention._configs(d)
    single_stage = {k: (bm, bn, w, 1) for k, (bm, bn, w, _) in gpu.items()}
    monkeypatch.setattr(attention, "_configs", lambda head_dim: single_stage)
    check_grads(flash_attention, sdpa, qkv(1, 1, m, n, d, torch.float32), torch.float32, causal=True)
