"""``autopar.tracer.saved``: bytes saved for backward, each storage once, as autograd keeps them."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autopar.runtime.saved_probe import SavedTensorsProbe
from autopar.tracer import trace


def _node(gm, op: str, k: int = 0):
    return [n for n in gm.graph.nodes if n.meta.get("op") == op][k]


def _saved(node) -> int:
    return node.meta["profile"].saved_bytes


class Projections(nn.Module):
    """h = LN(x); three linears read h; 0.5 * q saves nothing; a * b saves two views of one storage."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln, self.q, self.k, self.v = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 2 * d)
        self.w = nn.Parameter(torch.randn(2 * d))

    def forward(self, x):
        h = self.ln(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        a, b = (v * self.w).split(16, dim=-1)
        return (0.5 * q).sum() + (k * torch.tanh(a * b)).sum()


def test_a_storage_several_ops_save_counts_once_for_the_first_and_scalars_save_nothing():
    x = torch.randn(8, 16)
    gm = trace(Projections(), (x,))
    saved = {n.name: _saved(n) for n in gm.graph.nodes}
    h = 8 * 16 * 4
    assert saved["layer_norm"] == h + 2 * 8 * 4  # its input x, and mean and rstd per row
    assert (saved["linear"], saved["linear_1"], saved["linear_2"]) == (h, 0, 0)  # h once, for its first reader
    assert ("layer_norm", None) in _node(gm, "linear", 1).meta["storage"].saves  # saved by k too, counted already
    assert saved["mul"] == 2 * h  # v * w saves v (w's gradient) and w (a parameter, held anyway)
    assert saved["mul_1"] == 0  # 0.5 * q: a Python scalar needs no saved tensor
    assert saved["mul_2"] == 2 * h  # a * b: two views of v * w, one storage counted once
    assert _node(gm, "mul", 2).meta["storage"].saves == (("mul", None),)
    assert sum(saved.values()) == _measured(gm, x)


def test_attention_output_transposed_back_is_the_same_storage():
    """The fused CPU kernel lays its output out like q (B, S, H, E): transpose + contiguous copies nothing."""
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = (t.view(b, s, 4, 8).transpose(1, 2) for t in self.qkv(x).split(32, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).contiguous().view(b, s, 32)).sum()

    x = torch.randn(2, 8, 32, requires_grad=True)
    gm = trace(Attention(), (x,))
    assert _saved(_node(gm, "linear", 1)) == 0  # its input is the attention output, saved already
    assert sum(_saved(n) for n in gm.graph.nodes) == _measured(gm, x)


def _measured(gm, *inputs) -> int:
    with SavedTensorsProbe(gm) as probe:
        out = gm(*inputs)
    held = probe.nbytes()
    del out
    return held


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "t5"])
def test_predicted_saved_bytes_of_a_model_are_those_autograd_keeps(traced_hf, ids, name):
    _model, gm = traced_hf[name]
    predicted = sum(_saved(n) for n in gm.graph.nodes)
    with SavedTensorsProbe(gm) as probe:
        out = gm(input_ids=ids, labels=ids)
    measured = probe.nbytes()
    del out
    # within 10 % (the bar); here labels *is* input_ids, one storage where the graph sees two
    assert abs(predicted - measured) <= 0.1 * measured, f"{name}: predicted {predicted}, measured {measured}"
