"""Mixture-of-experts: trace the experts of a Hugging Face MoE layer as a dense computation.

Hugging Face's experts modules (``MixtralExperts``, ``Qwen2MoeExperts``, ... : classes decorated
with ``transformers.integrations.moe.use_experts_implementation``) dispatch tokens sparsely:
``nonzero``/``where`` on the routing mask (eager), ``histc`` offsets and ``grouped_mm`` (the
default), or a gather of one weight matrix per (token, expert) pair (``batched_mm``). The first
two have data-dependent shapes or no meta kernel for every dtype; the third materialises
``tokens * top_k`` copies of the weights. None can be planned.

While tracing, ``ColoTracer`` runs such a module through ``dense_experts_forward`` instead: every
expert on every token, each result weighted by that token's routing weight for the expert, which
is 0 for the experts it did not select. With E experts, top-k indices ``idx`` (T, k) and weights
``w`` (T, k)::

    W[t, e]  = sum_j w[t, j] * [idx[t, j] == e]                  (T, E), zero where e not selected
    U[e]     = act_gate(h @ Wgu[e]^T (+ bgu[e]))                 (E, T, I)
    Y[e]     = U[e] @ Wd[e]^T (+ bd[e])                          (E, T, H)
    out[t]   = sum_e W[t, e] * Y[e, t]                           (T, H)

which equals the sparse sum ``sum_j w[t, j] * expert_{idx[t, j]}(h[t])`` exactly (up to the order of
floating-point sums): the unselected terms are exact zeros, in forward and in backward (their
weights' gradients get ``0 * ...``). Every op is a batched matmul, a pointwise op or a sum, so the
expert dim E can be split over a mesh axis (expert parallelism, the sum over E a partial sum). The
price: each token runs E experts instead of k, so the traced graph's expert FLOPs are E/k times
the sparse model's (for Mixtral 8x7b, 4x), and the plan's compute estimate for them is that high.
"""
from __future__ import annotations

import functools

import torch


def is_hf_experts(module: torch.nn.Module) -> bool:
    """A Hugging Face experts module: decorated by ``use_experts_implementation`` (3-D expert weights)."""
    return (hasattr(module, "is_concatenated") and hasattr(module, "has_gate") and hasattr(module, "down_proj")
            and hasattr(module, "num_experts"))


def dense_forward(module: torch.nn.Module):
    """``dense_experts_forward`` bound to ``module`` if it is a Hugging Face experts module, else None."""
    return functools.partial(dense_experts_forward, module) if is_hf_experts(module) else None


def _project(x: torch.Tensor, weight: torch.Tensor, bias, transposed: bool) -> torch.Tensor:
    """(T, in) or (E, T, in) against per-expert weights (E, out, in) (or (E, in, out) transposed) -> (E, T, out)."""
    out = torch.matmul(x, weight if transposed else weight.transpose(-1, -2))
    return out if bias is None else out + bias.unsqueeze(-2)


def routing_matrix(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    """W (T, E): W[t, e] = sum_j w[t, j] * [idx[t, j] == e]; indices outside [0, E) get no weight."""
    experts = torch.arange(num_experts, device=top_k_index.device)
    hit = (top_k_index.unsqueeze(-1) == experts).to(top_k_weights.dtype)  # (T, k, E)
    return (hit * top_k_weights.unsqueeze(-1)).sum(dim=-2)


def dense_experts_forward(module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """The experts of ``module`` on every token, combined with the dense routing matrix (module docstring)."""
    has_bias = getattr(module, "has_bias", False)
    if module.has_gate:
        up = _project(hidden_states, module.gate_up_proj, module.gate_up_proj_bias if has_bias else None,
                      module.is_transposed)
        act = module._apply_gate(up)  # (E, T, I): the gate acts on the last dim only
    else:
        up = _project(hidden_states, module.up_proj, module.up_proj_bias if has_bias else None, module.is_transposed)
        act = module.act_fn(up)
    out = _project(act, module.down_proj, module.down_proj_bias if has_bias else None, module.is_transposed)
    if getattr(module, "has_post_expert_norm", False):
        out = module.post_expert_norm(out)
    weights = routing_matrix(top_k_index, top_k_weights, module.num_experts)  # (T, E)
    combined = (out * weights.transpose(0, 1).unsqueeze(-1).to(out.dtype)).sum(dim=0)  # (T, H)
    return combined.to(hidden_states.dtype)
