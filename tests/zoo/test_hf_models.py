"""Tier 2: every Hugging Face zoo model, tiny size, on a 2x2 mesh of 4 gloo processes.

Each model is autoparallelized and must give the single-device loss and every gradient (rtol 1e-4,
atol 1e-5), and the same parameters after 3 AdamW steps (``check_cases``). The models share two
spawned worlds (spawning costs ~12 s): decoder-only LMs in one, the rest in the other. The plan may
not fall back to replicate on any op.
"""
from __future__ import annotations

import pytest

from tests.distributed import run_distributed
from tests.test_autoparallelize import check_cases

DECODERS = ["llama", "mistral", "qwen2", "mixtral", "opt", "gpt_neox"]
OTHERS = ["bert", "roberta", "t5", "bart", "vit"]


def check_hf(rank: int, world_size: int, names: list[str]) -> list[dict]:
    """``check_cases`` on the tiny size of each model, mesh 2x2 (each report lists the plan's fallbacks)."""
    return check_cases(rank, world_size, [(name, "tiny", (2, 2), None) for name in names])


@pytest.mark.parametrize("names", [DECODERS, OTHERS], ids=["decoders", "encoders_seq2seq_vit"])
def test_hf_tiny_same_numbers_on_2x2(names):
    reports = run_distributed(check_hf, 4, names, timeout=1200)
    assert len(reports[0]) == len(names)
    fallbacks = {case["case"]: case["fallbacks"] for case in reports[0] if case["fallbacks"]}
    assert not fallbacks, f"ops planned replicated for want of a rule: {fallbacks}"
