"""Tier 1: on a GPT-2 block (Hugging Face's GPT2LMHeadModel, on meta), the ILP rediscovers the known plans.

- small batch, wide model: Megatron tensor parallelism: q, k and v column-split (their weights are
  pieces of the fused ``c_attn``: tracer/fused.py), attention with its heads split, the output
  projection row-split, the MLP column-then-row;
- large batch: data parallelism: every weight replicated, the batch split;
- a budget below the replicated model's state (parameters + gradients + optimizer): parameters and
  optimizer state sharded (ZeRO-like).

The vocabulary is small (2048) so that the blocks, not the LM head, dominate the model.
"""
from __future__ import annotations

import logging

import pytest
import torch

import autopar

H100 = autopar.ClusterInfo.preset("8xH100")


def gpt2(batch: int, seq: int, hidden: int, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=16, vocab_size=2048, n_positions=seq,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
    return model, {"input_ids": ids, "labels": ids}


def specs(plan, prefix: str) -> dict[str, str]:
    """The chosen spec of every parameter whose node name starts with ``prefix``, by the rest of the name."""
    return {row.name[len(prefix):]: str(row.strategy.output) for row in plan.rows
            if row.op == "param" and row.name.startswith(prefix)}


def sdpa_rows(plan):
    return [row for row in plan.rows if row.op == "sdpa"]


def test_small_batch_gpt_block_is_megatron():
    model, inputs = gpt2(1, 1024, 2048)
    plan = autopar.plan(model, H100, inputs)
    block = specs(plan, "transformer_h_0_")
    for i in range(3):  # q, k, v: column parallel (the weight split on its output dim; Conv1D stores (in, out))
        assert block[f"attn_c_attn_weight_piece{i}"] == "RS0", block
        assert block[f"attn_c_attn_bias_piece{i}"] == "S0", block
    assert block["attn_c_proj_weight"] == "S0R", block  # row parallel: split on its input dim
    assert block["mlp_c_fc_weight"] == "RS0" and block["mlp_c_fc_bias"] == "S0", block
    assert block["mlp_c_proj_weight"] == "S0R", block
    for row in sdpa_rows(plan):  # (batch, heads, seq, head dim): the heads split, nothing gathered
        assert str(row.strategy.output) == "RS0RR", row
        assert all(str(s) == "RS0RR" for s in row.strategy.inputs[:3]), row


def test_large_batch_gpt_block_is_data_parallel():
    model, inputs = gpt2(64, 1024, 1024)
    plan = autopar.plan(model, H100, inputs)
    block = specs(plan, "transformer_h_0_")
    assert len(block) == 16 and set(block.values()) <= {"R", "RR"}, block  # 2 norms, q, k, v, 2 projections
    for row in sdpa_rows(plan):
        assert str(row.strategy.output) == "S0RRR", row  # the batch split


def test_budget_below_replicated_state_shards_parameters_and_optimizer_state():
    model, inputs = gpt2(16, 256, 1024, layers=4)
    free = autopar.plan(model, H100, inputs)
    n_params = sum(p.numel() for p in model.parameters())
    state = n_params * 4 * 4  # fp32 parameter + gradient + AdamW's two moments, replicated
    assert free.memory.params == pytest.approx(n_params * 4, rel=0.01)  # the free plan replicates
    budget = 0.7 * state
    plan = autopar.plan(model, H100, inputs, memory_budget=budget)
    assert plan.peak_memory <= budget * (1 + 1e-9)
    assert plan.memory.params <= free.memory.params / 2
    assert plan.memory.optimizer <= free.memory.optimizer / 2
    for layer in range(4):
        block = specs(plan, f"transformer_h_{layer}_")
        assert block["mlp_c_fc_weight"] != "RR" and block["mlp_c_proj_weight"] != "RR", block
