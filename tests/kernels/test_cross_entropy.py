"""cross_entropy against F.cross_entropy: loss and dlogits, with ignored targets and blockwise vocab."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from autopar.kernels import cross_entropy

from tests.kernels.helpers import check_grads

ce_module = importlib.import_module("autopar.kernels.cross_entropy")  # the package attribute is the function


def ref(logits, target, ignore_index=-100, reduction="mean"):
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)


def inputs(rows, vocab, dtype, ignored=0, ignore_index=-100):
    logits = (3 * torch.randn(rows, vocab)).to(dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,))
    target[torch.randperm(rows)[:ignored]] = ignore_index
    return [logits, target]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_with_ignored_targets(reduction):
    check_grads(cross_entropy, ref, inputs(9, 77, torch.float32, ignored=3), torch.float32, reduction=reduction)


def test_vocabulary_in_many_blocks(monkeypatch):
    """A vocabulary of 1000 in blocks of 128 (last block partial): online logsumexp across blocks."""
    monkeypatch.setattr(ce_module, "MAX_BLOCK", 128)
    check_grads(cross_entropy, ref, inputs(6, 1000, torch.float32, ignored=1), torch.float32)


def test_custom_ignore_index():
    check_grads(cross_entropy, ref, inputs(8, 50, torch.float32, ignored=2, ignore_index=3) + [3], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision(dtype):
    check_grads(cross_entropy, ref, inputs(5, 300, dtype, ignored=1), dtype)


def test_all_ignored_mean_is_nan_like_torch():
    logits, target = inputs(4, 20, torch.float32)
    target[:] = -100
    assert torch.isnan(cross_entropy(logits, target)) and torch.isnan(ref(logits, target))


def test_three_dim_logits_fall_back():
    logits = torch.randn(2, 7, 5)
    target = torch.randint(0, 7, (2, 5))
    assert torch.allclose(cross_entropy(logits, target), ref(logits, target))
