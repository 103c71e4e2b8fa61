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

    kwargs = {**NO_DROP, **always, **(dict(tiny_kwargs, num_classes=TINY_CLASSES) if size == "tiny" else {})}
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
