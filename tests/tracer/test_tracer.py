"""``autopar.tracer.trace``: traced graphs equal eager, are functional, and carry the meta contract."""
from __future__ import annotations

import copy
import operator
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autopar.errors import AutoparError
from autopar.tracer import TraceError, trace
from autopar.tracer.meta import NodeProfile, TensorMeta

from .conftest import MLP, hf_models

META_KEYS = ("val", "tensor", "op", "profile", "source")
HF_NAMES = ("gpt2", "llama", "bert", "t5")


def keys_of(gm) -> set[str]:
    return {n.meta["op"] for n in gm.graph.nodes}


def assert_contract(gm, model) -> None:
    """No call_module nodes, every parameter a get_attr, every node carries the meta keys."""
    nodes = list(gm.graph.nodes)
    assert not [n for n in nodes if n.op in ("call_module", "call_method")]
    for n in nodes:
        missing = [k for k in META_KEYS if k not in n.meta]
        assert not missing, f"%{n.name} lacks {missing}"
        assert isinstance(n.meta["profile"], NodeProfile)
        if isinstance(n.meta["val"], torch.Tensor):
            assert isinstance(n.meta["tensor"], TensorMeta)
            assert n.meta["tensor"].shape == tuple(n.meta["val"].shape)
    # a piece of a fused projection's weight (tracer/fused.py) stands for the weight it was cut from
    params = {n.meta.get("param_piece", (n.meta["param"],))[0]
              for n in nodes if n.op == "get_attr" and "param" in n.meta}
    all_names = {name for name, _ in model.named_parameters()}  # first name of each distinct parameter
    used = {n.meta["param_piece"][0] if "param_piece" in n.meta else a
            for n in nodes if "param_aliases" in n.meta for a in n.meta["param_aliases"]}
    assert params <= all_names
    assert all(n.meta["op"] == "param" for n in nodes if "param" in n.meta)
    assert used <= {name for name, _ in model.named_parameters(remove_duplicate=False)}


# ---------------------------------------------------------------------------------- MLP
def test_mlp_traces_to_canonical_ops_and_equals_eager():
    torch.manual_seed(0)
    model, x, y = MLP(), torch.randn(6, 8), torch.randn(6, 4)
    gm = trace(model, (x, y))
    assert torch.allclose(gm(x, y), model(x, y), atol=1e-6)
    assert_contract(gm, model)
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "y"]
    assert {"linear", "gelu", "relu", "sub", "pow", "mean"} <= keys_of(gm)
    mean = next(n for n in gm.graph.nodes if n.meta["op"] == "mean")
    assert mean.args[1:] == ((0, 1), False)  # every dim, non-negative
    params = [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert len(params) == 6 and gm.fc1.weight is model.fc1.weight  # the model's own Parameters


def test_linear_flops_are_exactly_2mkn():
    torch.manual_seed(0)
    model, x, y = MLP(8, 32, 4), torch.randn(6, 8), torch.randn(6, 4)
    gm = trace(model, (x, y))
    first = next(n for n in gm.graph.nodes if n.meta["op"] == "linear")
    prof = first.meta["profile"]
    m, k, n = 6, 8, 32
    assert prof.fwd_flops == 2 * m * k * n
    assert prof.bwd_flops == 2 * m * k * n  # x needs no grad: only the weight gradient
    assert prof.out_bytes == m * n * 4
    second = [n for n in gm.graph.nodes if n.meta["op"] == "linear"][1]
    assert second.meta["profile"].bwd_flops == 2 * second.meta["profile"].fwd_flops
    assert second.meta["profile"].saved_bytes == 6 * 32 * 4  # saves its input, not its weight


def test_mse_loss_and_single_tensor_input():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return F.mse_loss(self.lin(x), torch.zeros_like(x))

    model, x = Net(), torch.randn(3, 4)
    gm = trace(model, x)
    assert torch.allclose(gm(x), model(x))
    assert {"linear", "new_zeros", "mse_loss"} <= keys_of(gm)  # zeros_like(x) is x.new_zeros(shape)


# ------------------------------------------------------------------- Hugging Face models
@pytest.mark.parametrize("name", HF_NAMES)
def test_hf_model_equals_eager(name, traced_hf, ids):
    model, gm = traced_hf[name]
    out = gm(input_ids=ids, labels=ids)
    ref = model(input_ids=ids, labels=ids, use_cache=False)
    assert type(out) is type(ref)
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert_contract(gm, model)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    assert isinstance(out_node.args[0], tuple)  # flat: later passes walk it


EXPECTED_KEYS = {
    "gpt2": {"addmm", "linear", "view", "permute", "layer_norm", "sdpa", "cross_entropy",
             "embedding"},  # no split: tracer/fused.py cut qkv's matmul
    "llama": {"linear", "view", "permute", "sdpa", "cross_entropy", "embedding", "silu", "rsqrt", "cat", "neg",
              "slice", "mean", "pow"},
    "bert": {"linear", "view", "permute", "layer_norm", "sdpa", "cross_entropy", "embedding", "gelu"},
    "t5": {"linear", "view", "permute", "sdpa", "cross_entropy", "embedding", "relu", "rsqrt"},
}


@pytest.mark.parametrize("name", HF_NAMES)
def test_hf_canonical_keys(name, traced_hf):
    _, gm = traced_hf[name]
    assert EXPECTED_KEYS[name] <= keys_of(gm)
    for n in gm.graph.nodes:
        key = n.meta["op"]
        if key == "view":
            assert n.target is torch.reshape and -1 not in n.args[1]
            assert tuple(n.args[1]) == tuple(n.meta["val"].shape)
        elif key == "permute":
            assert sorted(n.args[1]) == list(range(n.meta["val"].dim()))
        elif key == "slice":
            assert n.target is operator.getitem and Ellipsis not in n.args[1]
            assert sum(i is not None for i in n.args[1]) == n.args[0].meta["val"].dim()
        elif key in ("softmax", "log_softmax", "cat", "stack"):
            assert n.args[1] >= 0
        elif key in ("sum", "mean"):
            assert all(d >= 0 for d in n.args[1]) and isinstance(n.args[2], bool)
        elif key == "split":
            assert sum(n.args[1]) == n.args[0].meta["val"].shape[n.args[2]]


def test_gpt2_tied_weights_share_one_node(traced_hf):
    model, gm = traced_hf["gpt2"]
    wte = [n for n in gm.graph.nodes if n.op == "get_attr" and n.meta.get("param") == "transformer.wte.weight"]
    assert len(wte) == 1
    assert set(wte[0].meta["param_aliases"]) == {"transformer.wte.weight", "lm_head.weight"}
    assert {u.meta["op"] for u in wte[0].users} == {"embedding", "linear"}
    assert gm.transformer.wte.weight is model.transformer.wte.weight  # the same Parameter object


def test_no_meta_device_literal_in_graph(traced_hf):
    for name, (_, gm) in traced_hf.items():
        assert "meta" not in gm.code, name
        for n in gm.graph.nodes:
            dev = n.kwargs.get("device")
            assert dev is None or isinstance(dev, torch.fx.Node), (name, n.name)


def test_source_points_at_model_code(traced_hf):
    _, gm = traced_hf["gpt2"]
    sdpa = next(n for n in gm.graph.nodes if n.meta["op"] == "sdpa")
    assert re.fullmatch(r"\w+\.py:\d+ in \w+: .+", sdpa.meta["source"])
    assert sdpa.meta["source"].startswith(("sdpa_attention.py:", "modeling_gpt2.py:"))
    assert next(n for n in gm.graph.nodes if n.op == "placeholder").meta["source"] == ""


# ------------------------------------------------------------------------- meta models
def test_model_on_meta_traces_without_weights(ids):
    with torch.device("meta"):
        model = hf_models()["gpt2"]()
    gm = trace(model, {"input_ids": ids.to("meta"), "labels": ids.to("meta")})
    logits = next(n for n in gm.graph.nodes if n.op == "output").args[0][1]
    assert logits.meta["tensor"].shape == (4, 16, 128)
    assert all(p.device.type == "meta" for p in gm.parameters())


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_llama_7b_on_meta_traces_without_allocating_weights():
    import transformers as T

    cfg = T.LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = T.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 32000, (1, 2048), device="meta")
    before = _rss()
    gm = trace(model, {"input_ids": ids, "labels": ids})  # its time is in bench/trace.py
    grown = _rss() - before
    assert grown < 2**30, f"tracing a 7B model on meta grew the process by {grown / 2**20:.0f} MiB"
    assert sum(n.meta["op"] == "linear" for n in gm.graph.nodes) == 32 * 7 + 1
    params = {n.meta["param"] for n in gm.graph.nodes if n.op == "get_attr" and "param" in n.meta}
    assert params == {name for name, _ in model.named_parameters()}


# --------------------------------------------------------------------------- errors
class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:  # data-dependent: the line the error must name
            return y * 2
        return y


def test_data_dependent_branch_raises_trace_error_with_source_line():
    with pytest.raises(TraceError) as info:
        trace(_Branchy(), torch.randn(2, 4))
    assert isinstance(info.value, AutoparError)
    line = _Branchy.forward.__code__.co_firstlineno + 2
    assert f"test_tracer.py:{line}" in str(info.value)
    assert "if y.sum() > 0" in str(info.value) and "What to do" in str(info.value)


def test_item_raises_trace_error():
    class Net(nn.Module):
        def forward(self, x):
            return x[: int(x.max().item())]

    with pytest.raises(TraceError, match="item"):
        trace(Net(), torch.randn(2, 4))


# ---------------------------------------------------------------- shapes while tracing
def test_shape_control_flow_and_concrete_args():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x, scale=None, flag=True):
            b, s, d = x.shape
            assert len(x) == b and x.dim() == 3 and x.size(-1) == d and x.numel() == b * s * d
            h = self.lin(x).view(b * s, d).transpose(0, 1).contiguous().view(d, b, s)
            if x.shape[1] > 2 and flag:
                h = h[..., 1:] * scale
            first, second = h.chunk(2, dim=-3)
            return torch.cat([second, first], dim=-1).softmax(-1)

    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 5, 8)
    gm = trace(model, {"x": x, "scale": 3.0})
    assert torch.allclose(gm(x=x, scale=3.0), model(x, 3.0), atol=1e-6)
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "scale"]
    ops = {n.meta["op"]: n for n in gm.graph.nodes}
    assert ops["permute"].args[1] == (1, 0)
    assert ops["slice"].args[1] == (slice(0, 8, 1), slice(0, 2, 1), slice(1, 5, 1))
    assert ops["split"].args[1:] == ([4, 4], 0)
    assert ops["cat"].args[2:] == () and ops["cat"].args[1] == 2 and ops["softmax"].args[1] == 2
    gm2 = trace(model, (x,), concrete_args={"flag": False})
    assert "slice" not in keys_of(gm2) and torch.allclose(gm2(x), model(x, flag=False), atol=1e-6)



class _DeadBranch(nn.Module):
    """Fuzz seeds 13 and 34: a Conv1d and an index buffer that only code nobody uses reads."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(6, 4)
        self.dead = nn.Conv1d(3, 5, 2)
        self.register_buffer("index", torch.tensor([2, 0, 1]))
        self.register_buffer("never", torch.ones(2))

    def forward(self, x):
        _unused = (self.dead(x).sum(1) > 0) & (x.index_select(1, self.index).sum(1)[..., :5] > 0)  # noqa: F841
        return self.used(x).square().mean()


def test_state_only_dead_code_reads_stays_in_the_graph():
    model, x = _DeadBranch(), torch.randn(2, 3, 6)
    gm = trace(model, (x,))
    kept = {n.target: n.meta["op"] for n in gm.graph.nodes if n.op == "get_attr"}
    assert kept == {"used.weight": "param", "used.bias": "param", "dead.weight": "param", "dead.bias": "param",
                    "index": "buffer", "never": "buffer"}
    assert all(n.meta.get("unread") for n in gm.graph.nodes if n.op == "get_attr" and not n.target.startswith("used"))
    assert isinstance(gm.get_parameter("dead.weight"), nn.Parameter) and gm.get_buffer("index") is model.index
    assert not any(n.meta.get("op") == "conv1d" for n in gm.graph.nodes)  # the dead code itself is gone
    torch.testing.assert_close(gm(x), model(x))


def test_operator_and_is_no_inplace_op():
    """``a & b`` is ``operator.and_``: removed when dead (above), never stateful (stage 2 may recompute it)."""
    from autopar.solver.checkpoint import stateful

    class Masks(nn.Module):
        def forward(self, x):
            return torch.where((x > 0) & (x < 1) | (x < -1), x, 0.0).sum()

    gm = trace(Masks(), (torch.randn(4, 3),))
    ops = {n.meta["op"]: n for n in gm.graph.nodes if n.op == "call_function"}
    assert {"and_", "or_"} <= set(ops) and not stateful(ops["and_"]) and not stateful(ops["or_"])


def test_a_view_meta_strides_alone_refuse_traces_as_the_model_runs():
    """batch_norm's meta kernel keeps a transposed input's strides where the CPU kernel returns a contiguous
    result, so ``bn(x.t()).view(-1)`` runs on one device but failed on meta (fuzz seed 5038)."""
    bn = nn.BatchNorm1d(5)

    class ViewAfterNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn(x.t()).view(25).square().mean()

    x = torch.randn(5, 5)
    gm = trace(ViewAfterNorm(), (x,))
    assert [n.meta["val"].shape for n in gm.graph.nodes if n.meta.get("op") == "view"] == [(25,)]
    torch.testing.assert_close(gm(x), ViewAfterNorm()(x))


class _DeadNorm(nn.Module):
    """A BatchNorm whose output only dead code reads (fuzz seed 243): its running statistics still move."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(3, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        h = self.fc(x)
        _unused = self.bn(h) > 0  # noqa: F841
        return h.sum()


def test_a_batch_norm_only_dead_code_reads_still_updates_its_statistics():
    model, x = _DeadNorm(), torch.randn(8, 3)
    gm = trace(copy.deepcopy(model), (x,))
    assert any(n.meta.get("op") == "batch_norm" for n in gm.graph.nodes)
    gm(x)
    model(x)
    got = dict(gm.named_buffers())
    for name, buf in model.named_buffers():
        torch.testing.assert_close(got[name], buf, msg=lambda m, name=name: f"{name}: {m}")
