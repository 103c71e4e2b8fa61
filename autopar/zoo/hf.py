"""Hugging Face transformers architectures, from configs: a tiny size for runs, published sizes for planning.

Every builder returns ``(model, example_inputs)`` whose inputs make the model compute its own
loss (``labels``), so the same call trains. Dropouts are 0 so runs compare exactly with a
single device. ``tiny`` sizes (1-2 layers, hidden 64, vocab 128, batch 4, seq 16) run on a CPU
cluster in seconds; published sizes are meant for ``device="meta"`` (planning without weights).
"""
from __future__ import annotations

import torch

from autopar.zoo import lm_inputs, register

TINY_BATCH, TINY_SEQ = 4, 16
BIG_BATCH, BIG_SEQ = 8, 2048


def _shape(size: str, big=(BIG_BATCH, BIG_SEQ)) -> tuple[int, int]:
    return (TINY_BATCH, TINY_SEQ) if size == "tiny" else big


def _decoder_lm(config_cls, model_cls, sizes: dict, size: str, device, overrides: dict, **common):
    """A causal LM: config from ``sizes[size]`` plus ``common`` and ``overrides``; token ids as inputs and labels."""
    cfg = config_cls(**{**common, **sizes[size], **overrides})
    batch, seq = _shape(size)
    return model_cls(cfg), lm_inputs(batch, seq, cfg.vocab_size, device)


def _ids(batch: int, seq: int, vocab: int, device) -> torch.Tensor:
    if device == "meta":
        return torch.empty(batch, seq, dtype=torch.long, device="meta")
    return torch.randint(0, vocab, (batch, seq), device=device)


# ---- GPT-2 --------------------------------------------------------------------------------------
_GPT2_SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0),
    "124m": dict(),  # GPT2Config's defaults are GPT-2 small
    "355m": dict(n_layer=24, n_embd=1024, n_head=16),
    "774m": dict(n_layer=36, n_embd=1280, n_head=20),
    "1.5b": dict(n_layer=48, n_embd=1600, n_head=25),
}


@register("gpt2", _GPT2_SIZES, "124m")
def gpt2(size: str, device, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**{**_GPT2_SIZES[size], **overrides}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    batch, seq = (4, 16) if size == "tiny" else (8, 1024)
    return GPT2LMHeadModel(cfg), lm_inputs(batch, seq, cfg.vocab_size, device)


# ---- Llama-style decoders (RMSNorm, rotary, SwiGLU, grouped-query attention) ---------------------
_TINY_LLAMA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
_LLAMA_SIZES = {
    "tiny": _TINY_LLAMA,
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
    "405b": dict(num_hidden_layers=126, hidden_size=16384, intermediate_size=53248, num_attention_heads=128,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
}
_MISTRAL_SIZES = {
    "tiny": dict(_TINY_LLAMA, sliding_window=8),  # a window shorter than the sequence: the mask is banded
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096),
}
_QWEN2_SIZES = {
    "tiny": _TINY_LLAMA,
    "7b": dict(num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768),
}
_MIXTRAL_SIZES = {
    "tiny": dict(_TINY_LLAMA, num_local_experts=4, num_experts_per_tok=2),
    "8x7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                 num_local_experts=8, num_experts_per_tok=2),
}


@register("llama", _LLAMA_SIZES, "7b")
def llama(size: str, device, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _decoder_lm(LlamaConfig, LlamaForCausalLM, _LLAMA_SIZES, size, device, overrides, attention_dropout=0.0)


@register("mistral", _MISTRAL_SIZES, "7b")
def mistral(size: str, device, **overrides):
    from transformers import MistralConfig, MistralForCausalLM

    return _decoder_lm(MistralConfig, MistralForCausalLM, _MISTRAL_SIZES, size, device, overrides,
                       attention_dropout=0.0)


@register("qwen2", _QWEN2_SIZES, "7b")
def qwen2(size: str, device, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _decoder_lm(Qwen2Config, Qwen2ForCausalLM, _QWEN2_SIZES, size, device, overrides, attention_dropout=0.0)


@register("mixtral", _MIXTRAL_SIZES, "8x7b")
def mixtral(size: str, device, **overrides):
    """Mixtral: top-2 of 8 experts per token. The tracer runs the experts densely (autopar.tracer.moe)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    return _decoder_lm(MixtralConfig, MixtralForCausalLM, _MIXTRAL_SIZES, size, device, overrides,
                       attention_dropout=0.0, router_jitter_noise=0.0, output_router_logits=False)


# ---- OPT, GPT-NeoX ---------------------------------------------------------------------------------
_OPT_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, ffn_dim=128, num_attention_heads=4, vocab_size=128,
                 max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=1),
    "1.3b": dict(num_hidden_layers=24, hidden_size=2048, ffn_dim=8192, num_attention_heads=32, vocab_size=50272,
                 max_position_embeddings=2048, word_embed_proj_dim=2048),
}
_NEOX_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=4, vocab_size=128,
                 max_position_embeddings=64, rotary_pct=0.5),
    "pythia-1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=8,
                      vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25),
    "20b": dict(num_hidden_layers=44, hidden_size=6144, intermediate_size=24576, num_attention_heads=64,
                vocab_size=50432, max_position_embeddings=2048, rotary_pct=0.25),
}


@register("opt", _OPT_SIZES, "1.3b")
def opt(size: str, device, **overrides):
    from transformers import OPTConfig, OPTForCausalLM

    return _decoder_lm(OPTConfig, OPTForCausalLM, _OPT_SIZES, size, device, overrides, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)


@register("gpt_neox", _NEOX_SIZES, "pythia-1b")
def gpt_neox(size: str, device, **overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return _decoder_lm(GPTNeoXConfig, GPTNeoXForCausalLM, _NEOX_SIZES, size, device, overrides, attention_dropout=0.0,
                       hidden_dropout=0.0)


# ---- encoders: BERT, RoBERTa (masked LM with labels) -----------------------------------------------
_TINY_ENCODER = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     vocab_size=128, max_position_embeddings=64)
_BERT_SIZES = {"tiny": _TINY_ENCODER, "base": dict(), "large": dict(
    num_hidden_layers=24, hidden_size=1024, intermediate_size=4096, num_attention_heads=16)}
_ROBERTA_SIZES = {"tiny": dict(_TINY_ENCODER, max_position_embeddings=66), "base": dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)}


def _masked_lm(config_cls, model_cls, sizes, size, device, overrides):
    cfg = config_cls(**{**sizes[size], **overrides}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch, seq = _shape(size, (32, 512))
    ids = _ids(batch, seq, cfg.vocab_size, device)
    return model_cls(cfg), {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


@register("bert", _BERT_SIZES, "base")
def bert(size: str, device, **overrides):
    from transformers import BertConfig, BertForMaskedLM

    return _masked_lm(BertConfig, BertForMaskedLM, _BERT_SIZES, size, device, overrides)


@register("roberta", _ROBERTA_SIZES, "base")
def roberta(size: str, device, **overrides):
    from transformers import RobertaConfig, RobertaForMaskedLM

    return _masked_lm(RobertaConfig, RobertaForMaskedLM, _ROBERTA_SIZES, size, device, overrides)


# ---- encoder-decoders: T5, BART (labels; the decoder inputs are the labels shifted right) ----------
_T5_SIZES = {
    "tiny": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=128),
    "base": dict(num_layers=12, num_decoder_layers=12, d_model=768, d_ff=3072, num_heads=12, d_kv=64,
                 vocab_size=32128),
}
_BART_SIZES = {
    "tiny": dict(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=128, max_position_embeddings=64),
    "base": dict(encoder_layers=6, decoder_layers=6, d_model=768, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                 encoder_attention_heads=12, decoder_attention_heads=12, vocab_size=50265,
                 max_position_embeddings=1024),
}


def _seq2seq_inputs(size: str, vocab: int, device, big=(16, 512, 128)) -> dict:
    batch, src, tgt = (TINY_BATCH, TINY_SEQ, TINY_SEQ // 2) if size == "tiny" else big
    ids = _ids(batch, src, vocab, device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": _ids(batch, tgt, vocab, device),
            "use_cache": False}


@register("t5", _T5_SIZES, "base")
def t5(size: str, device, **overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(**{**_T5_SIZES[size], **overrides}, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    return T5ForConditionalGeneration(cfg), _seq2seq_inputs(size, cfg.vocab_size, device)


@register("bart", _BART_SIZES, "base")
def bart(size: str, device, **overrides):
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(**{**_BART_SIZES[size], **overrides}, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                     encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=1, decoder_start_token_id=2)
    return BartForConditionalGeneration(cfg), _seq2seq_inputs(size, cfg.vocab_size, device)


# ---- ViT (image classification with labels) ----------------------------------------------------------
_VIT_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32,
                 patch_size=8, num_labels=10),
    "base": dict(num_labels=1000),  # ViTConfig's defaults are ViT-B/16 at 224x224
    "large": dict(num_hidden_layers=24, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                  num_labels=1000),
}


@register("vit", _VIT_SIZES, "base")
def vit(size: str, device, **overrides):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(**{**_VIT_SIZES[size], **overrides}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = TINY_BATCH if size == "tiny" else 64
    shape = (batch, cfg.num_channels, cfg.image_size, cfg.image_size)
    if device == "meta":
        pixels, labels = torch.empty(shape), torch.empty(batch, dtype=torch.long)
    else:
        pixels, labels = torch.randn(shape), torch.randint(0, cfg.num_labels, (batch,))
    return ViTForImageClassification(cfg), {"pixel_values": pixels, "labels": labels}


# ---- fewer layers, same width: the per-layer ops of a published size, cheap to plan in tests --------
LAYER_KEYS = {"gpt2": ("n_layer",), "gptj": ("n_layer",), "codegen": ("n_layer",), "bloom": ("n_layer",),
              "t5": ("num_layers", "num_decoder_layers"), "bart": ("encoder_layers", "decoder_layers"),
              "whisper": ("encoder_layers", "decoder_layers")}


def build_with_layers(name: str, size: str, layers: int, *, device: str = "meta", seed: int = 0):
    """``zoo.build(name, size)`` with ``layers`` layers (each stack), everything else as published."""
    from autopar.zoo import _REGISTRY, _load_families

    _load_families()
    keys = LAYER_KEYS.get(name, ("num_hidden_layers",))
    torch.manual_seed(seed)
    with torch.device(device):
        return _REGISTRY[name].build(size, device, **{k: layers for k in keys})
