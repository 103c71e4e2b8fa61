"""swap_kernels on a small symbolically traced module: which nodes change, and that outputs stay equal."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autopar.errors import AutoparError
from autopar.runtime.kernel_pass import Substitution, kernels_enabled, swap_kernels
from tests.kernels.helpers import rel_err

B, S, H, D, V = 2, 12, 2, 16, 40
OPS = {F.scaled_dot_product_attention: "sdpa", F.layer_norm: "layer_norm", F.rms_norm: "rms_norm",
       torch.softmax: "softmax", F.cross_entropy: "cross_entropy"}


class Tiny(nn.Module):
    """LayerNorm -> causal attention -> RMSNorm -> logits; a loss plus a softmax read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_w, self.ln_b = nn.Parameter(torch.randn(H * D)), nn.Parameter(torch.randn(H * D))
        self.rms_w = nn.Parameter(torch.randn(H * D))
        self.qkv = nn.Linear(H * D, 3 * H * D)
        self.head = nn.Linear(H * D, V)

    def forward(self, x, target, mask):
        h = F.layer_norm(x, (H * D,), self.ln_w, self.ln_b, 1e-5)
        q, k, v = self.qkv(h).view(B, S, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True, scale=None)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=None)
        a = (a + masked).transpose(1, 2).reshape(B * S, H * D)
        logits = self.head(F.rms_norm(a, (H * D,), self.rms_w, 1e-6))
        probs = torch.softmax(logits, 1)
        loss = F.cross_entropy(logits, target, ignore_index=-100, reduction="mean")
        smoothed = F.cross_entropy(logits, target, label_smoothing=0.1)
        return loss + smoothed + probs.square().mean()


def traced() -> fx.GraphModule:
    gm = fx.symbolic_trace(Tiny())
    for node in gm.graph.nodes:
        node.meta["op"] = OPS.get(node.target, str(node.target)) if node.op == "call_function" else node.op
    return gm


def example():
    target = torch.randint(0, V, (B * S,))
    target[:3] = -100
    return torch.randn(B, S, H * D), target, torch.randn(S, S)


def test_substitutes_supported_nodes_and_keeps_outputs():
    gm = traced()
    inputs = example()
    want = gm(*inputs)
    want_grads = torch.autograd.grad(want, list(gm.parameters()))
    subs = swap_kernels(gm, force=True)
    assert all(isinstance(s, Substitution) for s in subs)
    assert sorted((s.op, s.kernel) for s in subs) == [
        ("cross_entropy", "cross_entropy"), ("layer_norm", "layer_norm"), ("rms_norm", "rms_norm"),
        ("sdpa", "flash_attention"), ("softmax", "softmax")]
    kept = {n.name: n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert kept["scaled_dot_product_attention_1"] is F.scaled_dot_product_attention  # has an attn_mask
    assert kept["cross_entropy_1"] is F.cross_entropy  # label smoothing
    assert "flash_attention" in gm.code and str(subs[0]).startswith("%")
    got = gm(*inputs)
    assert rel_err(got, want) < 1e-5
    for g, w in zip(torch.autograd.grad(got, list(gm.parameters())), want_grads):
        assert rel_err(g, w) < 1e-4


def test_cpu_without_force_changes_nothing():
    gm = traced()
    before = gm.code
    assert swap_kernels(gm) == [] and gm.code == before


def test_kernels_enabled(monkeypatch):
    assert kernels_enabled("cuda", None) and not kernels_enabled("cpu", None)
    assert not kernels_enabled("cuda", False) and kernels_enabled("cpu", True)  # TRITON_INTERPRET=1 here
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(AutoparError, match="TRITON_INTERPRET=1"):
        kernels_enabled(torch.device("cpu"), True)


def test_on_a_graph_from_autopar_trace():
    """The tracer's canonical forms (nn.LayerNorm, nn.RMSNorm with eps None, Tensor.softmax) are swapped too."""
    from autopar.tracer import trace

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.rms, self.tiny = nn.LayerNorm(H * D), nn.RMSNorm(H * D), Tiny()

        def forward(self, x, target, mask):
            return self.tiny(self.rms(self.ln(x)).softmax(-1), target, mask)

    model, inputs = Wrapped(), example()
    gm = trace(model, inputs)
    subs = swap_kernels(gm, force=True)
    assert sorted(s.kernel for s in subs) == ["cross_entropy", "flash_attention", "layer_norm", "layer_norm",
                                              "rms_norm", "rms_norm", "softmax", "softmax"]
    assert rel_err(gm(*inputs), model(*inputs)) < 1e-5
