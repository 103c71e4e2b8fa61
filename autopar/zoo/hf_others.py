"""More Hugging Face architectures that are not causal LMs: DeBERTa-v2, Whisper, Segformer, CLIP, DINOv2.

Each computes its own training loss from its inputs (``labels``, or CLIP's ``return_loss``), with a
``tiny`` size for CPU runs and its published size for planning on ``meta``. The ops they add:
disentangled relative attention with ``repeat`` and ``gather`` (DeBERTa-v2), ``conv1d`` audio stems
(Whisper), ``interpolate`` (Segformer's decode head and loss), ``argmax`` pooling of the end token
(CLIP) and a parameter the forward never reads (DINOv2's ``mask_token``). Dropouts are 0.
"""
from __future__ import annotations

import torch

from autopar.zoo import register
from autopar.zoo.hf import TINY_BATCH, TINY_SEQ, _ids, _shape


def _randn(shape, device) -> torch.Tensor:
    return torch.empty(shape) if device == "meta" else torch.randn(shape)


def _labels(batch: int, classes: int, device, shape=()) -> torch.Tensor:
    if device == "meta":
        return torch.empty((batch, *shape), dtype=torch.long)
    return torch.randint(0, classes, (batch, *shape))


# ---- DeBERTa-v2 / v3 (masked LM) ----------------------------------------------------------------------
_DEBERTA_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=128,
                 max_position_embeddings=64, position_buckets=8),
    "v3-base": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                    vocab_size=128100, max_position_embeddings=512, position_buckets=256),
}


@register("deberta_v2", _DEBERTA_SIZES, "v3-base")
def deberta_v2(size: str, device, **overrides):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    cfg = DebertaV2Config(**{**_DEBERTA_SIZES[size], **overrides}, relative_attention=True, max_relative_positions=-1,
                          pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                          type_vocab_size=0, position_biased_input=False, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    batch, seq = _shape(size, (32, 512))
    ids = _ids(batch, seq, cfg.vocab_size, device)
    return DebertaV2ForMaskedLM(cfg), {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


# ---- Whisper (speech to text: log-mel features, conv1d stem, encoder-decoder) ---------------------------
_WHISPER_SIZES = {
    "tiny": dict(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=128, num_mel_bins=16,
                 max_source_positions=16, max_target_positions=32),
    "base": dict(encoder_layers=6, decoder_layers=6, d_model=512, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                 encoder_attention_heads=8, decoder_attention_heads=8, vocab_size=51865, num_mel_bins=80,
                 max_source_positions=1500, max_target_positions=448),
}


@register("whisper", _WHISPER_SIZES, "base")
def whisper(size: str, device, **overrides):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(**{**_WHISPER_SIZES[size], **overrides}, dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, decoder_start_token_id=1, suppress_tokens=None,
                        begin_suppress_tokens=None)
    batch, tgt = (TINY_BATCH, TINY_SEQ // 2) if size == "tiny" else (16, 128)
    features = _randn((batch, cfg.num_mel_bins, 2 * cfg.max_source_positions), device)
    return WhisperForConditionalGeneration(cfg), {"input_features": features,
                                                  "labels": _ids(batch, tgt, cfg.vocab_size, device),
                                                  "use_cache": False}


# ---- Segformer (semantic segmentation: overlapping patch merges, efficient attention, MLP decoder) --------
_SEGFORMER_SIZES = {
    "tiny": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                 strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=4),
    "b0": dict(decoder_hidden_size=256, num_labels=150),  # SegformerConfig's defaults are MiT-b0
}


@register("segformer", _SEGFORMER_SIZES, "b0")
def segformer(size: str, device, **overrides):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(**{**_SEGFORMER_SIZES[size], **overrides}, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, drop_path_rate=0.0)
    batch, image = (TINY_BATCH, 32) if size == "tiny" else (16, 512)
    return SegformerForSemanticSegmentation(cfg), {
        "pixel_values": _randn((batch, 3, image, image), device),
        "labels": _labels(batch, cfg.num_labels, device, (image, image))}


# ---- CLIP (contrastive image-text: two towers, the end token's state pooled by argmax) ------------------
_CLIP_SIZES = {
    "tiny": (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=128,
                  max_position_embeddings=TINY_SEQ, eos_token_id=2),
             dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32,
                  patch_size=8), 32),
    "vit-b-32": (dict(), dict(), 512),  # CLIPConfig's defaults are ViT-B/32
}


@register("clip", _CLIP_SIZES, "vit-b-32")
def clip(size: str, device, **overrides):
    from transformers import CLIPConfig, CLIPModel

    text, vision, projection = _CLIP_SIZES[size]
    layers = {k: overrides.pop(k) for k in ("num_hidden_layers",) if k in overrides}
    cfg = CLIPConfig(text_config={**text, **layers}, vision_config={**vision, **layers}, projection_dim=projection,
                     **overrides)
    batch, seq = (TINY_BATCH, TINY_SEQ) if size == "tiny" else (64, 77)
    image = cfg.vision_config.image_size
    return CLIPModel(cfg), {"input_ids": _ids(batch, seq, cfg.text_config.vocab_size, device),
                            "pixel_values": _randn((batch, 3, image, image), device), "return_loss": True}


# ---- DINOv2 (ViT with layer scale and a mask token the classification forward never reads) --------------
_DINOV2_SIZES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, mlp_ratio=2, image_size=28,
                 patch_size=7, num_labels=8),
    "small": dict(num_hidden_layers=12, hidden_size=384, num_attention_heads=6, mlp_ratio=4, image_size=224,
                  patch_size=14, num_labels=1000),
}


@register("dinov2", _DINOV2_SIZES, "small")
def dinov2(size: str, device, **overrides):
    from transformers import Dinov2Config, Dinov2ForImageClassification

    cfg = Dinov2Config(**{**_DINOV2_SIZES[size], **overrides}, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    batch = TINY_BATCH if size == "tiny" else 64
    return Dinov2ForImageClassification(cfg), {
        "pixel_values": _randn((batch, 3, cfg.image_size, cfg.image_size), device),
        "labels": _labels(batch, cfg.num_labels, device)}
