"""tracer/fused.py: a matmul split into pieces right after becomes one matmul per piece of the weight."""
from __future__ import annotations

import torch
import torch.nn as nn

from autopar.tracer import trace
from tests.models import gpt2_tiny


def test_gpt2_qkv_becomes_three_projections_with_weight_pieces_and_the_same_forward():
    torch.manual_seed(0)
    model, inputs = gpt2_tiny("cpu")
    model.eval()  # no dropout
    gm = trace(model, inputs)
    nodes = list(gm.graph.nodes)
    assert not [n for n in nodes if n.meta.get("op") == "split"]  # GPT-2's only split was the qkv one
    pieces = [n for n in nodes if "param_piece" in n.meta]
    assert len(pieces) == 2 * 2 * 3  # 2 layers x (weight, bias) x (q, k, v)
    w = model.transformer.h[1].attn.c_attn.weight
    for i in range(3):  # Conv1D stores (in, out): the pieces are column blocks
        node = next(n for n in pieces if n.meta["param"] == f"transformer.h.1.attn.c_attn.weight_piece{i}")
        assert node.meta["param_piece"] == ("transformer.h.1.attn.c_attn.weight", 1, 64 * i, 64 * (i + 1))
        piece = gm.get_parameter(node.target)
        assert piece.shape == (64, 64) and piece.data_ptr() == w[:, 64 * i:].data_ptr()  # a view, not a copy
        assert node.meta["tensor"].shape == (64, 64)
    with torch.no_grad():
        want, got = model(**inputs), gm(**inputs)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)


class SplitAfterMatmul(nn.Module):
    """``linear`` then ``split``: rewritten; ``linear`` whose output is also used whole: left alone."""

    def __init__(self, reuse: bool) -> None:
        super().__init__()
        self.proj, self.reuse = nn.Linear(8, 12), reuse

    def forward(self, x):
        y = self.proj(x)
        a, b = y.split([4, 8], dim=-1)
        out = a.sum() + b.pow(2).sum()
        return out + y.mean() if self.reuse else out


def test_linear_split_is_rewritten_only_when_the_whole_output_is_unused():
    x = torch.randn(3, 5, 8)
    for reuse, expected in ((False, 2), (True, 0)):
        model = SplitAfterMatmul(reuse)
        gm = trace(model, (x,))
        pieces = [n for n in gm.graph.nodes if "param_piece" in n.meta]
        assert len(pieces) == 2 * expected
        if expected:  # nn.Linear stores (out, in): the pieces are row blocks
            assert [n.meta["param_piece"][1:] for n in pieces if "weight" in n.target] == [(0, 0, 4), (0, 4, 12)]
        torch.testing.assert_close(gm(x), model(x))


class OnePieceRead(nn.Module):
    """``linear`` then ``chunk``, only the first block read (fuzz seed 5161)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 10)

    def forward(self, x):
        return self.proj(x).chunk(4, dim=-1)[0].square().mean()


def test_a_split_with_a_block_nothing_reads_is_not_cut():
    """Cut, the unread block's weight piece would get no gradient, where on one device the whole weight gets
    one (zeros in that block): the weight would be missing from ``full_grads()`` and AdamW would skip it."""
    x = torch.randn(2, 6, 6)
    model = OnePieceRead()
    gm = trace(model, (x,))
    assert not [n for n in gm.graph.nodes if "param_piece" in n.meta]
    torch.testing.assert_close(gm(x), model(x))
