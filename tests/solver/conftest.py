"""Fixtures of the solver tests: traced models (on meta) and cluster presets."""
from __future__ import annotations

import pytest
import torch

from autopar.tracer import trace
from tests.models import MLP


def traced_mlp(batch: int, hidden: int, *, loss: bool = False):
    model = MLP(hidden).to("meta")
    x = torch.randn(batch, hidden, device="meta")
    inputs = (x, torch.randn(batch, hidden, device="meta")) if loss else (x,)
    return trace(model, inputs)


def node(gm, name: str):
    return next(n for n in gm.graph.nodes if n.name == name)


@pytest.fixture
def mlp_small():
    return traced_mlp(8, 64)


@pytest.fixture(scope="session")
def gpt2_gm():
    """GPT2LMHeadModel(n_layer=2, n_embd=64, n_head=4, vocab 128), batch 4, seq 16, with labels: traced once."""
    from tests.models import gpt2_tiny

    model, inputs = gpt2_tiny()
    return trace(model, inputs)
