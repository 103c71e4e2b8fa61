"""The fuzzer's op menu: for each op, how it runs (``APPLY``) and how a random instance is chosen (``BUILDERS``).

An op runs as ``APPLY[op](module, *tensors, **params)``: ``module`` is the graph's submodule the step
calls (None for a functional op), ``tensors`` are earlier values of the graph, ``params`` constants.
A builder looks at the values the graph has so far (``Builder.pick``), chooses the op's inputs and
constants, and calls ``Builder.add``, which runs the op on example tensors (so a step that cannot run,
or that would grow a value past the size cap, is never added) and records the output.

Values have a kind: ``"f"`` float (differentiable), ``"i"`` integer ids below ``vocab``, ``"b"`` a bool
mask; and a float value may have *ties* (equal elements, e.g. after relu or where): ops that pick
an element (topk, amax, max pooling, sort) only read tie-free values, since with ties a sharded run
may route the gradient to another of the equal elements and be right.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIZES = (2, 3, 4, 5, 6, 7, 8, 10, 12)  # dims, many not divisible by a mesh axis of 2 or 4


class Attention(nn.Module):
    """A multi-head self-attention block: qkv projection, heads, sdpa (or its softmax form), projection."""

    def __init__(self, dim: int, heads: int, causal: bool, explicit: bool) -> None:
        super().__init__()
        self.heads, self.causal, self.explicit = heads, causal, explicit
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):  # (b, s, e) -> (b, s, e)
        b, s, e = x.shape
        q, k, v = self.qkv(x).split(e, dim=-1)
        q, k, v = (t.view(b, s, self.heads, e // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.explicit:  # (b, h, s, d) @ (b, h, d, s) -> (b, h, s, s)
            scores = q @ k.transpose(-2, -1) / math.sqrt(e // self.heads)
            if self.causal:
                mask = torch.ones(s, s, dtype=torch.bool).tril()
                scores = scores.masked_fill(~mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, s, e))


class Const(nn.Module):
    """Holds one constant integer tensor (an index) as a buffer."""

    def __init__(self, values: list, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(values, dtype=torch.long).reshape(shape))


class Scale(nn.Module):
    """A broadcast parameter of ``shape``: ``x * weight`` or ``x + weight``."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(*shape) * 0.5 + 1.0)


MODULES = {"Attention": Attention, "Const": Const, "Scale": Scale}


def make_module(kind: str, args: tuple):
    return MODULES[kind](*args) if kind in MODULES else getattr(nn, kind)(*args)


def _causal(s: int):
    return torch.ones(s, s, dtype=torch.bool).tril()


# ---- how each op runs ------------------------------------------------------------------------------------
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "leaky_relu": F.leaky_relu, "softplus": F.softplus, "elu": F.elu,
               "exp_neg_sq": lambda x: torch.exp(-x * x)}
TIED_ACTIVATIONS = {"relu", "elu"}  # outputs with many equal elements (0, or -1 saturated)
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum, "minimum": torch.minimum}
REDUCTIONS = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}


LIKE = {  # *_like and other creation ops, combined with their model
    "zeros_plus": lambda x: torch.zeros_like(x) + x, "ones_mul": lambda x: x * torch.ones_like(x),
    "full_like": lambda x: torch.full_like(x, 0.5) * x, "new_ones": lambda x: x.new_ones(x.shape) - x,
    "zeros_shape": lambda x: x + torch.zeros(x.shape, dtype=x.dtype),
    "arange": lambda x: x + torch.arange(x.shape[-1], dtype=x.dtype),
}


def _inplace(x, z, how: str, k: int):
    y = x * 1.5  # a fresh tensor (mul saves its inputs, not its output)
    if how == "add_":
        y.add_(z)
    elif how == "mul_":
        y.mul_(z)
    elif how == "setitem":
        y[..., :k] = 0.0
    elif how == "setitem_value":
        y[..., :k] = z[..., :k]
    elif how == "relu_":
        y.relu_()
    elif how == "view_mul_":
        y[..., 0].mul_(2.0)
    elif how == "masked_fill_":
        y.masked_fill_(z > 0, 0.25)
    return y


APPLY = {
    "activation": lambda m, x, fn: ACTIVATIONS[fn](x),
    "scalar": lambda m, x, how, c: {"mul": lambda: x * c, "add": lambda: x + c, "rsub": lambda: c - x,
                                    "div": lambda: x / c, "pow": lambda: x.pow(2), "neg": lambda: -x}[how](),
    "binary": lambda m, a, b, fn: BINARY[fn](a, b),
    "add_mean": lambda m, x, dim: x - x.mean(dim, keepdim=True),
    "scale": lambda m, x, how: x * m.weight if how == "mul" else x + m.weight,
    "module": lambda m, x: m(x),  # Linear, norms, Conv, Embedding, Attention
    "residual": lambda m, x: x + m(x),
    "tied_linear": lambda m, x: F.linear(x, m.weight),
    "matmul": lambda m, a, b, how: {"matmul": torch.matmul, "at": lambda p, q: p @ q, "bmm": torch.bmm,
                                    "einsum": lambda p, q: torch.einsum("bij,bjk->bik", p, q)}[how](a, b),
    "gram": lambda m, x, left: x.transpose(-2, -1) @ x if left else x @ x.transpose(-2, -1),
    "baddbmm": lambda m, c, a, b, beta, alpha: torch.baddbmm(m.weight if m is not None else c, a, b.transpose(1, 2),
                                                            beta=beta, alpha=alpha),
    "softmax": lambda m, x, dim, log: x.log_softmax(dim) if log else torch.softmax(x, dim=dim),
    "sdpa": lambda m, q, k, v, causal, masked: F.scaled_dot_product_attention(
        q, k, v, attn_mask=_causal(q.shape[-2]) if masked else None, is_causal=causal),
    "reshape": lambda m, x, shape: x.reshape(shape),
    "view": lambda m, x, shape: x.view(*shape),
    "flatten": lambda m, x, start: x.flatten(start),
    "unsqueeze": lambda m, x, dim: x.unsqueeze(dim),
    "squeeze": lambda m, x, dim: x.squeeze(dim),
    "permute": lambda m, x, dims: x.permute(*dims),
    "transpose": lambda m, x, d0, d1: x.transpose(d0, d1),
    "slice": lambda m, x, dim, start, stop, step: x[(slice(None),) * dim + (slice(start, stop, step),)],
    "select": lambda m, x, dim, i: x[(slice(None),) * dim + (i,)],
    "narrow": lambda m, x, dim, start, length: x.narrow(dim, start, length),
    "index_select": lambda m, x, dim: x.index_select(dim, m.index),
    "advanced_index": lambda m, x, dim: x[(slice(None),) * dim + (m.index,)],
    "gather": lambda m, x, dim: torch.gather(x, dim, m.index),
    "split_cat": lambda m, x, size, dim: torch.cat(list(reversed(x.split(size, dim=dim))), dim=dim),
    "chunk": lambda m, x, n, dim, i: x.chunk(n, dim=dim)[i],
    "unbind": lambda m, x, dim, i: x.unbind(dim)[i],
    "cat": lambda m, a, b, dim: torch.cat([a, b], dim=dim),
    "stack": lambda m, a, b, dim: torch.stack([a, b], dim=dim),
    "reduce": lambda m, x, fn, dims, keepdim: REDUCTIONS[fn](x, dims, keepdim=keepdim),
    "max_values": lambda m, x, dim: x.max(dim=dim).values,
    "logsumexp": lambda m, x, dim: x.logsumexp(dim),
    "var": lambda m, x, dim: x.var(dim),
    "norm": lambda m, x, dim: x.norm(dim=dim),
    "cumsum": lambda m, x, dim: x.cumsum(dim),
    "argmax": lambda m, x, dim: x.argmax(dim),
    "pool": lambda m, x, fn, k: {"max_pool1d": lambda: F.max_pool1d(x, k), "avg_pool1d": lambda: F.avg_pool1d(x, k),
                                 "adaptive_avg_pool1d": lambda: F.adaptive_avg_pool1d(x, k),
                                 "max_pool2d": lambda: F.max_pool2d(x, k), "avg_pool2d": lambda: F.avg_pool2d(x, k),
                                 "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(x, k)}[fn](),
    "like": lambda m, x, how: LIKE[how](x),
    "where_zeros": lambda m, x, how: torch.where(x > 0, x, torch.zeros_like(x)) if how == "zeros_like"
    else torch.where(x > 0, x, 0.0),
    "mask": lambda m, x, how: {"gt": lambda: x > 0, "lt_mean": lambda: x < x.mean(-1, keepdim=True),
                               "tril": lambda: _causal(x.shape[-1]).expand(x.shape)}[how](),
    "mask_logic": lambda m, a, b, how: {"and": lambda: a & b, "or": lambda: a | b, "not": lambda: ~a}[how](),
    "where": lambda m, mask, a, b: torch.where(mask, a, b),
    "masked_fill": lambda m, x, mask, value: x.masked_fill(mask, value),
    "topk": lambda m, x, k, dim, largest: x.topk(k, dim=dim, largest=largest).values,
    "sort": lambda m, x, dim: x.sort(dim=dim).values,
    "inplace": lambda m, x, z, how, k: _inplace(x, z, how, k),
    "expand_sum": lambda m, x, dim, n: x.unsqueeze(dim).expand(*x.shape[:dim], n, *x.shape[dim:]).sum(dim),
    "repeat": lambda m, x, reps: x.repeat(*reps),
    "repeat_interleave": lambda m, x, n, dim: x.repeat_interleave(n, dim=dim),
    "pad": lambda m, x, left, right: F.pad(x, (left, right)),
    "roll": lambda m, x, shift, dim: torch.roll(x, shift, dim),
    "flip": lambda m, x, dim: x.flip(dim),
    "clamp": lambda m, x, lo, hi: x.clamp(lo, hi),
    "tril": lambda m, x: x.tril(),
    "cross_entropy": lambda m, x, ids: F.cross_entropy(x.reshape(-1, x.shape[-1]), ids.reshape(-1)),
}
