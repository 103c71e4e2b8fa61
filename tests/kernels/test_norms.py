"""layer_norm and rms_norm against F.layer_norm / F.rms_norm: forward, dx, dweight, dbias."""
import pytest
import torch
import torch.nn.functional as F
from autopar.kernels import layer_norm, layer_norm_reference, rms_norm

from tests.kernels.helpers import check_grads, rel_err


def ln_ref(x, w=None, b=None, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def rms_ref(x, w=None, eps=None):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def tensors(shape, n, dtype, *params):
    x = torch.randn(*shape, n, dtype=dtype).requires_grad_()
    return [x] + [(torch.randn(n, dtype=dtype) if p else None) for p in params]


def grad_all(ts):
    return [t.requires_grad_() if t is not None else None for t in ts]


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)], ids=["w+b", "w", "none"])
@pytest.mark.parametrize("shape,n", [((3, 7), 77), ((20,), 128)], ids=["3x7x77", "20x128"])
def test_layer_norm_fp32(shape, n, affine):
    check_grads(layer_norm, ln_ref, grad_all(tensors(shape, n, torch.float32, *affine)) + [1e-5], torch.float32)


@pytest.mark.parametrize("weighted", [True, False], ids=["w", "none"])
@pytest.mark.parametrize("shape,n", [((3, 7), 77), ((20,), 128)], ids=["3x7x77", "20x128"])
def test_rms_norm_fp32(shape, n, weighted):
    check_grads(rms_norm, rms_ref, grad_all(tensors(shape, n, torch.float32, weighted)) + [1e-6], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision(dtype):
    check_grads(layer_norm, ln_ref, grad_all(tensors((4, 3), 96, dtype, True, True)) + [1e-5], dtype)
    check_grads(rms_norm, rms_ref, grad_all(tensors((4, 3), 96, dtype, True)) + [1e-5], dtype)


def test_rms_norm_default_eps_is_dtype_eps():
    x, w = tensors((5,), 40, torch.float32, True)
    assert rel_err(rms_norm(x, w), rms_ref(x, w)) < 1e-6


def test_weight_only_gradient_and_non_contiguous_rows():
    """A transposed input (rows strided) and a weight that needs no gradient."""
    x = torch.randn(64, 6).t().requires_grad_()  # (6, 64), stride (1, 6): copied to rows
    w, b = torch.randn(64), torch.randn(64).requires_grad_()
    check_grads(layer_norm, ln_ref, [x, w, b, 1e-5], torch.float32)


def test_unsupported_weight_shape_falls_back():
    x, w = torch.randn(4, 8), torch.randn(2, 4)
    assert layer_norm_reference is not None
    with pytest.raises(RuntimeError):  # F.layer_norm rejects it too: the fallback gives torch's error
        layer_norm(x, w)
