"""Real architectures built from configs (never downloaded), with example inputs.

``build("gpt2", "124m", device="meta")`` returns ``(model, example_inputs)``: the published
size for planning on meta, or ``"tiny"`` for runs on a CPU cluster.
"""
from __future__ import annotations

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


_GPT2_SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0),
    "124m": dict(),  # GPT2Config's defaults are GPT-2 small
    "355m": dict(n_layer=24, n_embd=1024, n_head=16),
    "774m": dict(n_layer=36, n_embd=1280, n_head=20),
    "1.5b": dict(n_layer=48, n_embd=1600, n_head=25),
}
_MLP_SIZES = {"tiny": (64, 32), "small": (64, 1024), "wide": (4096, 8)}  # (hidden, batch)
SIZES = {"gpt2": _GPT2_SIZES, "mlp": _MLP_SIZES}
DEFAULT_SIZES = {"gpt2": "124m", "mlp": "small"}


def _gpt2(size: str, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**_GPT2_SIZES[size], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    batch, seq = (4, 16) if size == "tiny" else (8, 1024)
    return GPT2LMHeadModel(cfg), _lm_inputs(batch, seq, cfg.vocab_size, device)


def _lm_inputs(batch: int, seq: int, vocab: int, device) -> dict:
    if device == "meta":
        ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
    else:
        ids = torch.randint(0, vocab, (batch, seq), device=device)
    return {"input_ids": ids, "labels": ids, "use_cache": False}


def _mlp(size: str, device):
    hidden, batch = _MLP_SIZES[size]
    make = torch.empty if device == "meta" else torch.randn
    return MLP(hidden), (make(batch, hidden, device=device), make(batch, hidden, device=device))


_BUILDERS = {"gpt2": _gpt2, "mlp": _mlp}


def build(name: str, size: str | None = None, *, device: str = "meta", seed: int = 0):
    """``(model, example_inputs)`` for a zoo model; weights on ``device`` (``meta`` allocates nothing)."""
    key = name.removeprefix("hf:")
    if key not in _BUILDERS:
        raise AutoparError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    size = size or DEFAULT_SIZES[key]
    if size not in SIZES[key]:
        raise AutoparError(f"unknown size {size!r} for {key}; known: {', '.join(SIZES[key])}")
    torch.manual_seed(seed)
    with torch.device(device):
        return _BUILDERS[key](size, device)
