"""More Hugging Face causal LMs, from configs: GPT-J, CodeGen, Falcon, BLOOM, Phi-3, Gemma 2 and 3,
Qwen3, Qwen2-MoE, DeepSeek-V3, OLMo 2, Cohere, GLM-4.

Each is registered with a ``tiny`` size (2 layers, hidden 64, vocab 128, batch 4, seq 16: runs on a
CPU cluster in seconds) and its published size (for planning on ``meta``). They exercise ops the
first decoders did not: rotary tables built by ``repeat_interleave`` (GPT-J, CodeGen, Cohere, GLM-4),
ALiBi scores by ``baddbmm`` (BLOOM), multi-query k/v (Falcon), soft-capped logits and sliding
windows (Gemma 2), q/k norms (Qwen3, OLMo 2, Gemma 3), experts with a shared expert (Qwen2-MoE) and
a grouped top-k router with latent attention (DeepSeek-V3). Dropouts are 0.
"""
from __future__ import annotations

from autopar.zoo import register
from autopar.zoo.hf import _TINY_LLAMA, _decoder_lm

_TINY_GPTJ = dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, vocab_size=128, n_positions=64,
                  bos_token_id=0, eos_token_id=0)
_NO_DROP = dict(attention_dropout=0.0)


def _sizes(tiny: dict, **published) -> dict:
    return {"tiny": tiny, **published}


_GPTJ_SIZES = _sizes(_TINY_GPTJ, **{"6b": dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400,
                                              n_positions=2048)})
_CODEGEN_SIZES = _sizes(dict(_TINY_GPTJ, n_ctx=64), **{"350m": dict(n_layer=20, n_embd=1024, n_head=16, rotary_dim=32,
                                                                   vocab_size=51200, n_positions=2048, n_ctx=2048)})
_FALCON_SIZES = _sizes(dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
                            multi_query=True, parallel_attn=True, bias=False, new_decoder_architecture=False,
                            bos_token_id=0, eos_token_id=0),
                       **{"7b": dict(num_hidden_layers=32, hidden_size=4544, num_attention_heads=71, vocab_size=65024,
                                     multi_query=True, parallel_attn=True, bias=False,
                                     new_decoder_architecture=False)})
_BLOOM_SIZES = _sizes(dict(n_layer=2, hidden_size=64, n_head=4, vocab_size=128, bos_token_id=0, eos_token_id=0,
                           pad_token_id=0),
                      **{"560m": dict(n_layer=24, hidden_size=1024, n_head=16, vocab_size=250880)})
_PHI3_SIZES = _sizes(dict(_TINY_LLAMA, pad_token_id=0, bos_token_id=0, eos_token_id=0),
                     **{"mini": dict(num_hidden_layers=32, hidden_size=3072, intermediate_size=8192,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                     max_position_embeddings=4096)})
_GEMMA2_SIZES = _sizes(dict(_TINY_LLAMA, head_dim=16, sliding_window=8, query_pre_attn_scalar=16, pad_token_id=0,
                            bos_token_id=0, eos_token_id=0),
                       **{"2b": dict(num_hidden_layers=26, hidden_size=2304, intermediate_size=9216,
                                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                                     max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256)})
_GEMMA3_SIZES = _sizes(dict(_TINY_LLAMA, head_dim=16, sliding_window=8, query_pre_attn_scalar=16, pad_token_id=0,
                            bos_token_id=0, eos_token_id=0),
                       **{"1b": dict(num_hidden_layers=26, hidden_size=1152, intermediate_size=6912,
                                     num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                                     max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256)})
_QWEN3_SIZES = _sizes(dict(_TINY_LLAMA, head_dim=16),
                      **{"8b": dict(num_hidden_layers=36, hidden_size=4096, intermediate_size=12288,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                    max_position_embeddings=40960)})
_QWEN2_MOE_SIZES = _sizes(dict(_TINY_LLAMA, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                               num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1),
                          **{"a2.7b": dict(num_hidden_layers=24, hidden_size=2048, intermediate_size=5632,
                                           moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                                           num_attention_heads=16, num_key_value_heads=16, num_experts=60,
                                           num_experts_per_tok=4, vocab_size=151936, max_position_embeddings=8192)})
_DEEPSEEK_V3_SIZES = _sizes(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                 num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                 max_position_embeddings=64, n_routed_experts=8, n_shared_experts=1,
                                 num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                                 q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                 v_head_dim=16, pad_token_id=0, bos_token_id=0, eos_token_id=0),
                            **{"671b": dict()})  # DeepseekV3Config's defaults are DeepSeek-V3
_OLMO2_SIZES = _sizes(dict(_TINY_LLAMA, pad_token_id=0, bos_token_id=0, eos_token_id=0),
                      **{"7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=100352,
                                    max_position_embeddings=4096)})
_COHERE_SIZES = _sizes(dict(_TINY_LLAMA, pad_token_id=0, bos_token_id=0, eos_token_id=0),
                       **{"command-r": dict(num_hidden_layers=40, hidden_size=8192, intermediate_size=22528,
                                            num_attention_heads=64, num_key_value_heads=64, vocab_size=256000,
                                            max_position_embeddings=8192)})
_GLM4_SIZES = _sizes(dict(_TINY_LLAMA, head_dim=16, pad_token_id=0, bos_token_id=0, eos_token_id=[0]),
                     **{"9b": dict(num_hidden_layers=40, hidden_size=4096, intermediate_size=13696,
                                   num_attention_heads=32, num_key_value_heads=2, head_dim=128, vocab_size=151552,
                                   max_position_embeddings=32768)})


def _lm(name: str, sizes: dict, default: str, config: str, model: str, **common):
    """Register the causal LM ``transformers.<model>`` built from ``transformers.<config>``."""
    @register(name, sizes, default)
    def build(size: str, device, **overrides):
        import transformers

        return _decoder_lm(getattr(transformers, config), getattr(transformers, model), sizes, size, device,
                           overrides, **common)
    build.__name__ = name
    return build


gptj = _lm("gptj", _GPTJ_SIZES, "6b", "GPTJConfig", "GPTJForCausalLM", resid_pdrop=0.0, embd_pdrop=0.0,
           attn_pdrop=0.0)
codegen = _lm("codegen", _CODEGEN_SIZES, "350m", "CodeGenConfig", "CodeGenForCausalLM", resid_pdrop=0.0,
              embd_pdrop=0.0, attn_pdrop=0.0)
falcon = _lm("falcon", _FALCON_SIZES, "7b", "FalconConfig", "FalconForCausalLM", hidden_dropout=0.0,
             attention_dropout=0.0)
bloom = _lm("bloom", _BLOOM_SIZES, "560m", "BloomConfig", "BloomForCausalLM", hidden_dropout=0.0,
            attention_dropout=0.0)
phi3 = _lm("phi3", _PHI3_SIZES, "mini", "Phi3Config", "Phi3ForCausalLM", resid_pdrop=0.0, embd_pdrop=0.0,
           **_NO_DROP)
gemma2 = _lm("gemma2", _GEMMA2_SIZES, "2b", "Gemma2Config", "Gemma2ForCausalLM", **_NO_DROP)
gemma3 = _lm("gemma3", _GEMMA3_SIZES, "1b", "Gemma3TextConfig", "Gemma3ForCausalLM", **_NO_DROP)
qwen3 = _lm("qwen3", _QWEN3_SIZES, "8b", "Qwen3Config", "Qwen3ForCausalLM", **_NO_DROP)
qwen2_moe = _lm("qwen2_moe", _QWEN2_MOE_SIZES, "a2.7b", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                output_router_logits=False, **_NO_DROP)
deepseek_v3 = _lm("deepseek_v3", _DEEPSEEK_V3_SIZES, "671b", "DeepseekV3Config", "DeepseekV3ForCausalLM", **_NO_DROP)
olmo2 = _lm("olmo2", _OLMO2_SIZES, "7b", "Olmo2Config", "Olmo2ForCausalLM", **_NO_DROP)
cohere = _lm("cohere", _COHERE_SIZES, "command-r", "CohereConfig", "CohereForCausalLM", **_NO_DROP)
glm4 = _lm("glm4", _GLM4_SIZES, "9b", "Glm4Config", "Glm4ForCausalLM", **_NO_DROP)
