"""The pieces Hugging Face models needed: the dense experts rewrite, functionalised in-place ops, new rules."""
from __future__ import annotations

import pytest
import torch

import autopar
from autopar.solver.strategies import strategies_for
from autopar.tracer import trace
from autopar.tracer.moe import dense_experts_forward, routing_matrix


def _experts(implementation: str):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    cfg = MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2)
    cfg._experts_implementation = implementation
    torch.manual_seed(0)
    experts = MixtralExperts(cfg)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return experts


def test_routing_matrix_puts_each_weight_at_its_expert_and_zero_elsewhere():
    idx = torch.tensor([[0, 2], [3, 1]])
    w = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    want = torch.tensor([[0.7, 0.0, 0.3, 0.0], [0.0, 0.4, 0.0, 0.6]])
    torch.testing.assert_close(routing_matrix(idx, w, 4), want)


def test_dense_experts_equal_the_sparse_eager_dispatch_forward_and_backward():
    eager, dense = _experts("eager"), _experts("eager")
    h = torch.randn(10, 16, requires_grad=True)
    w, idx = torch.softmax(torch.randn(10, 4), -1).topk(2, dim=-1)
    w.requires_grad_(True)
    want = eager(h, idx, w)
    got = dense_experts_forward(dense, h, idx, w)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [h, w, *eager.parameters()], g)
    got_grads = torch.autograd.grad(got, [h, w, *dense.parameters()], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _ShiftRight(torch.nn.Module):
    """T5's label shift: new_zeros, two slice assignments, an in-place masked_fill_."""

    def forward(self, labels):
        shifted = labels.new_zeros(labels.shape)
        shifted[..., 1:] = labels[..., :-1].clone()
        shifted[..., 0] = 7
        shifted.masked_fill_(shifted == -100, 0)
        return shifted * 2


def test_inplace_ops_on_fresh_tensors_become_out_of_place_and_give_the_same_values():
    labels = torch.tensor([[1, -100, 3, 4], [5, 6, -100, 8]])
    gm = trace(_ShiftRight(), (labels,))
    ops = [n.meta["op"] for n in gm.graph.nodes]
    assert "setitem" not in ops and "masked_fill_" not in ops and ops.count("setitem_copy") == 2
    assert torch.equal(gm(labels), _ShiftRight()(labels))


def test_inplace_op_on_a_view_of_a_fresh_tensor_becomes_an_assignment():
    def f(x):
        y = x * 1
        v = y[:, :2]
        v.mul_(3)  # mutates y through the view
        k = torch.empty(2, 4)
        k[:, 2:].copy_(x[:, :2])  # DeepSeek-V3's expand_kv: copy_ into views of a fresh tensor
        k[:, :2].copy_(v)
        return y + k

    x = torch.randn(2, 4)
    module = type("M", (torch.nn.Module,), {"forward": lambda self, x: f(x)})()
    gm = trace(module, (x,))
    ops = [n.meta["op"] for n in gm.graph.nodes]
    assert "mul_" not in ops and "copy_" not in ops and ops.count("setitem_copy") == 3
    torch.testing.assert_close(gm(x), f(x))


def test_inplace_op_on_a_view_of_an_input_is_left_in_place():
    def f(x):
        x[:, :2].mul_(3)
        return x * 1

    module = type("M", (torch.nn.Module,), {"forward": lambda self, x: f(x)})()
    gm = trace(module, (torch.randn(2, 4),))
    assert "mul_" in [n.meta["op"] for n in gm.graph.nodes]
    x = torch.randn(2, 4)
    torch.testing.assert_close(gm(x.clone()), f(x.clone()))


def _specs(module, inputs, op):
    gm = trace(module, inputs)
    node = next(n for n in gm.graph.nodes if n.meta.get("op") == op)
    return sorted(str(s.output) for s in strategies_for(node, autopar.ClusterInfo.preset("cpu:2")))


@pytest.mark.parametrize("op, fn, want", [
    ("cumsum", lambda x: x.cumsum(-1), ["RR", "RR+P0", "S0R"]),
    ("pad", lambda x: torch.nn.functional.pad(x, (0, 1)), ["RR", "S0R"]),
    ("topk", lambda x: x.topk(2, dim=-1)[0], ["RR", "S0R"]),
    ("index", lambda x: x[torch.arange(4)[:, None], torch.arange(8)[None, :]], ["RR", "RR+P0", "RS0", "S0R"]),
])
def test_new_rules_split_the_dims_the_op_does_not_mix(op, fn, want):
    module = type("M", (torch.nn.Module,), {"forward": lambda self, x: fn(x)})()
    assert _specs(module, (torch.randn(4, 8),), op) == want
