"""timm vision models, built from their timm configs (``pretrained=False``: nothing is downloaded).

Each model is registered under ``timm:<published timm name>`` with two sizes: ``"full"`` (the
published architecture at 224x224, batch 64, meant for planning on ``meta``) and ``"tiny"`` (the
same architecture shrunk through timm's own keyword arguments: 32x32 images, one or two blocks
per stage, 8 classes, batch 4) for runs on a CPU cluster. Dropout and drop-path rates are 0, so
runs compare exactly with a single device.

timm models return logits; ``Classifier`` wraps one so the forward computes the training loss
``cross_entropy(model(pixel_values), labels)``. The timm module is the submodule ``model``, so
parameter names read ``model.<timm name>`` (``model.stem.0.weight``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from autopar.zoo import register

SIZES = ("tiny", "full")
TINY_BATCH, TINY_IMAGE, TINY_CLASSES = 4, 32, 8
FULL_BATCH, FULL_IMAGE, FULL_CLASSES = 64, 224, 1000
NO_DROP = dict(drop_rate=0.0, drop_path_rate=0.0)
NO_DROP_PATH = frozenset({"densenet121", "hrnet_w18_small"})  # models without stochastic depth


class Classifier(torch.nn.Module):
    """loss = cross_entropy(model(pixel_values), labels): a timm classifier that trains from (images, labels)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(pixel_values), labels)


def image_inputs(size: str, device, batch: int | None = None, image: int | None = None) -> dict:
    """``{"pixel_values": (b, 3, s, s), "labels": (b,)}``: random on a real device, empty on meta."""
    tiny = size == "tiny"
    batch = batch or (TINY_BATCH if tiny else FULL_BATCH)
    image = image or (TINY_IMAGE if tiny else FULL_IMAGE)
    classes = TINY_CLASSES if tiny else FULL_CLASSES
    shape = (batch, 3, image, image)
    if device == "meta":
        return {"pixel_values": torch.empty(shape), "labels": torch.empty(batch, dtype=torch.long)}
    return {"pixel_values": torch.randn(shape), "labels": torch.randint(0, classes, (batch,))}


def _create(name: str, size: str, tiny_kwargs: dict, device, *, batch: int | None = None, **always):
    import timm

    no_drop = NO_DROP if name not in NO_DROP_PATH else dict(drop_rate=0.0)
    kwargs = {**no_drop, **always, **(dict(tiny_kwargs, num_classes=TINY_CLASSES) if size == "tiny" else {})}
    model = timm.create_model(name, pretrained=False, **kwargs)
    return Classifier(model), image_inputs(size, device, batch)


def _timm(name: str, tiny_kwargs: dict, **always):
    """Register ``timm:<name>``: the published model, or shrunk by ``tiny_kwargs`` for the tiny size."""
    @register(f"timm:{name}", SIZES, "full")
    def build(size: str, device, batch: int | None = None):
        return _create(name, size, tiny_kwargs, device, batch=batch, **always)
    build.__name__ = name
    return build


# ViT / DeiT: patch embedding (a strided conv), class token, pre-norm transformer blocks (sdpa).
_TINY_VIT = dict(img_size=TINY_IMAGE, patch_size=8, depth=2, embed_dim=32, num_heads=2)
vit_base = _timm("vit_base_patch16_224", _TINY_VIT)
deit_base = _timm("deit_base_patch16_224", _TINY_VIT)
# ResNet-50: bottleneck blocks of conv + BatchNorm + ReLU, max pool stem, global average pool.
resnet50 = _timm("resnet50", dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8))
# ConvNeXt: depthwise 7x7 conv, LayerNorm2d (permute, layer_norm, permute), MLP, layer scale.
convnext_tiny = _timm("convnext_tiny", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)))
# Swin: window partition/reverse (views and permutes), shifted windows (roll + mask), relative bias.
swin_tiny = _timm("swin_tiny_patch4_window7_224", dict(img_size=TINY_IMAGE, embed_dim=16, depths=(2, 1),
                                                       num_heads=(1, 2), window_size=4))
# RegNetX: grouped 3x3 convs (group width 8 -> 4 in tiny), BatchNorm, ReLU.
regnetx_002 = _timm("regnetx_002", dict(depth=4, w0=8, wa=12.0, wm=1.5, group_size=4))


@register("timm:efficientnet_b0", SIZES, "full")
def efficientnet_b0(size: str, device, batch: int | None = None):
    """EfficientNet-B0: depthwise separable convs, squeeze-excite (mean over H, W; 1x1 convs; SiLU,
    sigmoid; mul), BatchNorm. Tiny: channel and depth multipliers of 0.25, and 64x64 images: at 32x32
    the last stages are 1x1, and BatchNorm over 4 values per channel makes float32 gradients differ from
    float64 ones by more than the tests' tolerance, on a single device already."""
    if size == "full":
        return _create("efficientnet_b0", size, {}, device, batch=batch)
    from timm.models.efficientnet import _gen_efficientnet

    model = _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25, pretrained=False,
                              num_classes=TINY_CLASSES, **NO_DROP)
    return Classifier(model), image_inputs(size, device, batch, image=2 * TINY_IMAGE)


# ---- more families: depthwise mobile nets, dense connectivity, pooling mixers, attention with BatchNorm -------
# DenseNet-121: dense blocks concatenating every layer's features, BatchNorm-ReLU-conv, transitions.
densenet121 = _timm("densenet121", dict(growth_rate=8, block_config=(2, 2), bn_size=2))
# LeViT-128: a conv stem, attention with BatchNorm'd projections and learned biases gathered per position pair.
levit_128 = _timm("levit_128", dict(img_size=TINY_IMAGE, embed_dim=(16, 32), key_dim=4, depth=(1, 1),
                                     num_heads=(2, 2)))


@register("timm:poolformer_s12", SIZES, "full")
def poolformer_s12(size: str, device, batch: int | None = None):
    """PoolFormer-S12: MetaFormer blocks whose token mixer is an average pool, every norm a GroupNorm(1).
    Tiny: one block per stage, 8-64 channels."""
    if size == "full":
        return _create("poolformer_s12", size, {}, device, batch=batch)
    import torch.nn as nn
    from timm.models.metaformer import GroupNorm1, MetaFormer

    model = MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), downsample_norm=None, mlp_act=nn.GELU,
                       mlp_bias=True, norm_layers=GroupNorm1, layer_scale_init_values=1e-5,
                       res_scale_init_values=None, use_mlp_head=False, num_classes=TINY_CLASSES, **NO_DROP)
    return Classifier(model), image_inputs(size, device, batch)


@register("timm:mobilenetv3_large_100", SIZES, "full")
def mobilenetv3_large_100(size: str, device, batch: int | None = None):
    """MobileNetV3-Large: inverted residuals, hard-swish, squeeze-excite with hard-sigmoid. Tiny: multipliers of
    0.25 and 64x64 images, as EfficientNet's (BatchNorm over a few values per channel is noisy in float32)."""
    if size == "full":
        return _create("mobilenetv3_large_100", size, {}, device, batch=batch)
    from timm.models.mobilenetv3 import _gen_mobilenet_v3

    model = _gen_mobilenet_v3("mobilenetv3_large_100", channel_multiplier=0.25, depth_multiplier=0.25,
                              pretrained=False, num_classes=TINY_CLASSES, **NO_DROP)
    return Classifier(model), image_inputs(size, device, batch, image=2 * TINY_IMAGE)


@register("timm:maxvit_tiny_tf_224", SIZES, "full")
def maxvit_tiny_tf_224(size: str, device, batch: int | None = None):
    """MaxViT-T: MBConv blocks, then block (window) and grid attention on partitions of the feature map, with
    relative position biases. Tiny: two stages of one block, partitions of 2x2 on 32x32 images."""
    if size == "full":
        return _create("maxvit_tiny_tf_224", size, {}, device, batch=batch)
    import dataclasses

    from timm.models.maxxvit import MaxxVit, model_cfgs

    cfg = model_cfgs["maxvit_tiny_tf"]
    cfg = dataclasses.replace(cfg, embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"), stem_width=16,
                              head_hidden_size=32,
                              transformer_cfg=dataclasses.replace(cfg.transformer_cfg, dim_head=8, partition_ratio=16))
    model = MaxxVit(cfg, img_size=TINY_IMAGE, num_classes=TINY_CLASSES, **NO_DROP)
    return Classifier(model), image_inputs(size, device, batch)


def _hrnet_tiny_cfg() -> dict:
    def stage(branches: int) -> dict:
        return dict(num_modules=1, num_branches=branches, block_type="BASIC", num_blocks=(1,) * branches,
                    num_channels=tuple(8 * 2 ** i for i in range(branches)), fuse_method="SUM")
    return dict(stem_width=16, stage1=dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,),
                                           num_channels=(8,), fuse_method="SUM"),
                stage2=stage(2), stage3=stage(3), stage4=stage(4))


@register("timm:hrnet_w18_small", SIZES, "full")
def hrnet_w18_small(size: str, device, batch: int | None = None):
    """HRNet-W18-small: parallel branches at four resolutions, fused by strided convs and nearest upsampling
    (``interpolate``). Tiny: one block per branch, 8-64 channels, 64x64 images (the fourth branch is 2x2)."""
    if size == "full":
        return _create("hrnet_w18_small", size, {}, device, batch=batch)
    from timm.models.hrnet import HighResolutionNet

    model = HighResolutionNet(_hrnet_tiny_cfg(), num_classes=TINY_CLASSES, drop_rate=0.0)
    return Classifier(model), image_inputs(size, device, batch, image=2 * TINY_IMAGE)
