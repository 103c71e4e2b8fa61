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


@register("mlp", ["tiny", "small", "wide"], "small")
def _mlp(size: str, device):
    hidden, batch = {"tiny": (64, 32), "small": (64, 1024), "wide": (4096, 8)}[size]
    make = torch.empty if device == "meta" else torch.randn
    return MLP(hidden), (make(batch, hidden, device=device), make(batch, hidden, device=device))


def _load_families() -> None:
    """Import the families that register themselves (Hugging Face, timm)."""
    from autopar.zoo import (
        hf,  # noqa: F401
        timm_models,  # noqa: F401
    )
