"""softmax (with an optional additive mask) against torch.softmax(x + mask): forward and gradients."""
import importlib

import pytest
import torch
from autopar.kernels import softmax

from tests.kernels.helpers import check_grads, rel_err

softmax_module = importlib.import_module("autopar.kernels.softmax")  # the package attribute is the function


def ref(x, dim=-1, mask=None):
    return torch.softmax(x if mask is None else x + mask, dim)


@pytest.fixture(params=[False, True], ids=["one-block", "looped"])
def blocks(request, monkeypatch):
    """Looped: rows longer than MAX_BLOCK take the two-pass online path."""
    if request.param:
        monkeypatch.setattr(softmax_module, "MAX_BLOCK", 16)
    return request.param


@pytest.mark.parametrize("shape,dim", [((3, 77), -1), ((4, 33, 5), 1)], ids=["rows", "middle-dim"])
def test_no_mask(shape, dim, blocks):
    check_grads(softmax, ref, [torch.randn(*shape).requires_grad_(), dim], torch.float32)


def test_causal_mask_broadcast_over_batch_and_heads(blocks):
    s = 20
    mask = torch.full((s, s), float("-inf")).triu(1)
    x = torch.randn(2, 3, s, s).requires_grad_()
    check_grads(softmax, ref, [x, -1, mask], torch.float32)


def test_padding_mask_with_gradient(blocks):
    """A (b, 1, 1, n) mask broadcasts inside x's dims; its gradient is summed back to its shape."""
    x = torch.randn(2, 3, 4, 21).requires_grad_()
    mask = torch.randn(2, 1, 1, 21).requires_grad_()
    check_grads(softmax, ref, [x, -1, mask], torch.float32)


def test_fp16_with_mask_along_dim0():
    x = torch.randn(40, 3, dtype=torch.float16).requires_grad_()
    mask = torch.randn(40, 1, dtype=torch.float16)
    check_grads(softmax, ref, [x, 0, mask], torch.float16)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the interpreter's numpy sees -inf - -inf
def test_fully_masked_row_is_nan_like_torch():
    x = torch.randn(2, 8)
    mask = torch.zeros(2, 8)
    mask[1] = float("-inf")
    out = softmax(x, -1, mask)
    assert torch.isnan(out[1]).all() and rel_err(out[0], ref(x, -1, mask)[0]) < 1e-6
