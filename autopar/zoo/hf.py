"""Hugging Face transformers architectures, from configs: a tiny size for runs, published sizes for planning."""
from __future__ import annotations

from autopar.zoo import lm_inputs, register

_GPT2_SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0),
    "124m": dict(),  # GPT2Config's defaults are GPT-2 small
    "355m": dict(n_layer=24, n_embd=1024, n_head=16),
    "774m": dict(n_layer=36, n_embd=1280, n_head=20),
    "1.5b": dict(n_layer=48, n_embd=1600, n_head=25),
}


@register("gpt2", _GPT2_SIZES, "124m")
def gpt2(size: str, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**_GPT2_SIZES[size], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    batch, seq = (4, 16) if size == "tiny" else (8, 1024)
    return GPT2LMHeadModel(cfg), lm_inputs(batch, seq, cfg.vocab_size, device)
