"""Real architectures built from configs (never downloaded), with example inputs.

``build("gpt2", "124m", device="meta")`` returns ``(model, example_inputs)``: the published
size for planning on meta, or ``"tiny"`` for runs on a CPU cluster. Families register
themselves from their own files (``hf.py``, ...) with ``@register(name, sizes, default)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from autopar.errors import AutoparError


class MLP(torch.nn.Module):
    """Linear(h, mult*h) -> GELU -> Linear(mult*h, h); with a target, the MSE loss."""

    def __init__(self, hidden: int = 64, mult: int = 4) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(hidden, mult * hidden)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(mult * hidden, hidden)

    def forward(self, x, y=None):
        out = self.fc2(self.act(self.fc1(x)))
        return out if y is None else ((out - y) ** 2).mean()


@dataclass(frozen=True)
class ZooEntry:
    """A family of models: ``build(size, device) -> (model, example_inputs)``, its sizes, its default size."""

    build: Callable[[str, str], tuple]
    sizes: tuple[str, ...]
    default: str


_REGISTRY: dict[str, ZooEntry] = {}


def register(name: str, sizes, default: str):
    """Decorator: ``@register("llama", ["tiny", "7b"], "7b")`` on a ``builder(size, device)``."""
    def wrap(builder):
        _REGISTRY[name] = ZooEntry(builder, tuple(sizes), default)
        return builder
    return wrap


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def build(name: str, size: str | None = None, *, device: str = "meta", seed: int = 0):
    """``(model, example_inputs)`` for a zoo model; weights on ``device`` (``meta`` allocates nothing).

    ``name`` is ``gpt2`` or ``hf:gpt2`` for Hugging Face models, ``timm:resnet50`` for timm ones.
    """
    _load_families()
    key = name.removeprefix("hf:")
    if key not in _REGISTRY:
        raise AutoparError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    entry = _REGISTRY[key]
    size = size or entry.default
    if size not in entry.sizes:
        raise AutoparError(f"unknown size {size!r} for {key}; known: {', '.join(entry.sizes)}")
    torch.manual_seed(seed)
    with torch.device(device):
        return entry.build(size, device)


def lm_inputs(batch: int, seq: int, vocab: int, device, labels: bool = True) -> dict:
    """Token ids (random below ``vocab``; empty on meta), as labels too, with ``use_cache=False``."""
    if device == "meta":
        ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
    else:
        ids = torch.randint(0, vocab, (batch, seq), device=device)
    inputs = {"input_ids": ids, "use_cache": False}
    if labels:
        inputs["labels"] = ids
    return inputs


def resize_inputs(inputs, *, batch: int | None = None, seq: int | None = None):
    """``inputs`` with every tensor's batch (dim 0) set to ``batch`` and every token tensor's sequence
    (dim 1 of an integer tensor) set to ``seq``; values are empty on meta, random ids or normals otherwise."""
    if batch is None and seq is None:
        return inputs
    for value, what in ((batch, "batch"), (seq, "seq")):
        if value is not None and value < 1:
            raise AutoparError(f"{what} must be a positive integer, got {value}")

    def resize(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        shape = list(t.shape)
        shape[0] = batch or shape[0]
        if seq is not None and t.dim() >= 2 and not t.is_floating_point():
            shape[1] = seq
        if t.is_meta:
            return torch.empty(shape, dtype=t.dtype, device="meta")
        if t.is_floating_point():
            return torch.randn(shape, dtype=t.dtype, device=t.device)
        return torch.randint(0, int(t.max()) + 1, shape, dtype=t.dtype, device=t.device)

    if isinstance(inputs, dict):
        out = {k: resize(v) for k, v in inputs.items()}
        if "labels" in out and "input_ids" in out and inputs["labels"] is inputs["input_ids"]:
            out["labels"] = out["input_ids"]  # the same tensor, as the model was given it
        return out
    if isinstance(inputs, tuple):
        return tuple(resize(v) for v in inputs)
    return resize(inputs)


@register("mlp", ["tiny", "small", "wide"], "small")
def _mlp(size: str, device):
    hidden, batch = {"tiny": (64, 32), "small": (64, 1024), "wide": (4096, 8)}[size]
    make = torch.empty if device == "meta" else torch.randn
    return MLP(hidden), (make(batch, hidden, device=device), make(batch, hidden, device=device))


def _load_families() -> None:
    """Import the families that register themselves (Hugging Face, timm)."""
    from autopar.zoo import (
        hf,  # noqa: F401
        hf_decoders,  # noqa: F401
        hf_others,  # noqa: F401
        timm_models,  # noqa: F401
    )
