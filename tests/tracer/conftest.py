"""Tiny models shared by the tracer tests (built from configs, never downloaded)."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

logging.getLogger("transformers").setLevel(logging.ERROR)

BATCH, SEQ, VOCAB = 4, 16, 128


class MLP(nn.Module):
    """Linear -> GELU -> Linear -> ReLU -> Linear, with an MSE loss written by hand."""

    def __init__(self, d_in: int = 8, d_hidden: int = 32, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.fc3 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        return ((self.fc3(h) - y) ** 2).mean()


def hf_models() -> dict:
    """name -> (model factory, config factory); imports transformers lazily."""
    import transformers as T

    return {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)),
        "bert": lambda: T.BertForMaskedLM(T.BertConfig(
            num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            vocab_size=VOCAB, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(
            num_layers=2, num_decoder_layers=2, d_model=64, d_ff=128, d_kv=16, num_heads=4,
            vocab_size=VOCAB, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)),
    }


@pytest.fixture(scope="session")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def traced_hf(ids):
    """name -> (model, traced GraphModule), traced once per session."""
    from autopar.tracer import trace

    out = {}
    torch.manual_seed(0)
    for name, make in hf_models().items():
        model = make()
        out[name] = (model, trace(model, {"input_ids": ids, "labels": ids}))
    return out
