"""Tier 1: no zoo model plans an op replicated for want of a sharding rule, at its tiny and its published size.

Every family of ``autopar.zoo``: the tiny size traced on CPU, strategies on a 2x2 mesh; the published
size traced on meta (Hugging Face models with 2 layers per stack: the layers repeat the same ops),
strategies on 8xH100. No node may get the replicate-only fallback (``node.meta["fallback"]``).
"""
from __future__ import annotations

import pytest

import autopar
from autopar import zoo
from autopar.tracer import trace
from autopar.zoo import hf
from tests.zoo.test_hf_plans import fallbacks

NAMES = zoo.names()


def _published(name: str):
    size = zoo._REGISTRY[name.removeprefix("hf:")].default
    if name.startswith("timm:") or name == "mlp":
        return zoo.build(name, size, device="meta")
    return hf.build_with_layers(name, size, 2)


@pytest.mark.parametrize("name", NAMES)
def test_no_fallback_at_tiny_and_published_size(name):
    model, inputs = zoo.build(name, "tiny", device="cpu")
    tiny = fallbacks(trace(model, inputs), autopar.ClusterInfo.preset("cpu:2x2"))
    model, inputs = _published(name)
    published = fallbacks(trace(model, inputs), autopar.ClusterInfo.preset("8xH100"))
    assert not tiny and not published, f"{name}: tiny {tiny}, published {published}"
