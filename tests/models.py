"""Small models shared by the tests (built from code or configs, never downloaded)."""
from __future__ import annotations

import torch

from autopar.zoo import MLP  # noqa: F401  (re-exported for the solver tests)


def gpt2_tiny(device: str = "meta"):
    """GPT2LMHeadModel(n_layer=2, n_embd=64, n_head=4, vocab 128) and inputs (batch 4, seq 16) with labels."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 128, (4, 16), device=device)
    return model, {"input_ids": ids, "labels": ids, "use_cache": False}
