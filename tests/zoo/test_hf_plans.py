"""Tier 1 (no processes): every Hugging Face zoo model traces, matches eager, and has a rule for every op.

- tiny sizes: the traced forward equals the eager one (loss and logits), and no node of the graph
  falls back to the replicate-only strategy on a 2x2 mesh;
- published sizes, on meta: the model at its published width (2 layers per stack, so the test stays
  quick: the layers repeat the same ops) plans on 8xH100 without a fallback; Llama 7b plans at full
  depth.
"""
from __future__ import annotations

import pytest
import torch

import autopar
from autopar import zoo
from autopar.solver.strategies import strategies_for
from autopar.tracer import trace
from autopar.zoo import hf

MODELS = ["gpt2", "llama", "mistral", "qwen2", "mixtral", "opt", "gpt_neox", "bert", "roberta", "t5", "bart", "vit",
          "gptj", "codegen", "falcon", "bloom", "phi3", "gemma2", "gemma3", "qwen3", "qwen2_moe", "deepseek_v3",
          "olmo2", "cohere", "glm4", "deberta_v2", "whisper", "segformer", "clip", "dinov2"]
PUBLISHED = [("llama", "70b"), ("mistral", "7b"), ("qwen2", "7b"), ("mixtral", "8x7b"), ("opt", "1.3b"),
             ("gpt_neox", "pythia-1b"), ("gpt_neox", "20b"), ("bert", "base"), ("roberta", "base"), ("t5", "base"),
             ("bart", "base"), ("vit", "base")]


def fallbacks(gm, cluster) -> list[str]:
    """``%node (op) at source`` for each node that got only the replicate strategy for lack of a rule."""
    out = []
    for node in gm.graph.nodes:
        strategies_for(node, cluster)
        if node.meta.get("fallback"):
            out.append(f"%{node.name} ({node.meta.get('op')}) at {node.meta.get('source')}")
    return out


@pytest.mark.parametrize("name", MODELS)
def test_tiny_traced_forward_equals_eager_and_every_op_has_a_rule(name):
    model, inputs = zoo.build(name, "tiny", device="cpu")
    gm = trace(model, inputs)
    with torch.no_grad():
        want, got = model(**inputs), gm(**inputs)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    logits = "logits" if hasattr(want, "logits") else "logits_per_image"  # CLIP scores image-text pairs
    torch.testing.assert_close(getattr(got, logits), getattr(want, logits), rtol=1e-5, atol=1e-6)
    assert fallbacks(gm, autopar.ClusterInfo.preset("cpu:2x2")) == []


@pytest.mark.parametrize("name, size", PUBLISHED, ids=[f"{n}-{s}" for n, s in PUBLISHED])
def test_published_width_plans_on_8xH100_without_fallback(name, size):
    model, inputs = hf.build_with_layers(name, size, 2)
    plan = autopar.plan(model, autopar.ClusterInfo.preset("8xH100"), inputs, time_limit=30)
    assert not plan.fallbacks, plan.fallbacks


def test_llama_7b_plans_at_full_depth_on_meta():
    model, inputs = zoo.build("llama", "7b", device="meta")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(6.74e9, rel=0.01)
    plan = autopar.plan(model, autopar.ClusterInfo.preset("8xH100"), inputs, time_limit=60)
    assert not plan.fallbacks, plan.fallbacks
