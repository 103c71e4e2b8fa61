"""A tiny GPT-2 through autoparallelize with kernels forced on (Triton's interpreter) trains the same."""
from __future__ import annotations

import copy
import os

import torch

from tests.distributed import run_distributed


def check_kernels(rank: int, world_size: int) -> dict:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported in this process
    import autopar
    from autopar import zoo

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    twin = copy.deepcopy(model)
    cluster = autopar.ClusterInfo.preset("cpu:2")
    plain = autopar.autoparallelize(model, cluster, inputs, kernels=False)
    fused = autopar.autoparallelize(twin, cluster, inputs, kernels=True)
    assert not plain.kernel_substitutions and fused.kernel_substitutions
    loss_plain, loss_fused = plain(**inputs).loss, fused(**inputs).loss
    loss_plain.backward()
    loss_fused.backward()
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-5, atol=1e-6)
    g_plain, g_fused = plain.full_grads(), fused.full_grads()
    for name, g in g_plain.items():
        torch.testing.assert_close(g_fused[name], g, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    return {"substitutions": [str(s) for s in fused.kernel_substitutions], "report": fused.report()}


def test_gpt2_with_kernels_forced_on_gives_the_same_loss_and_gradients():
    results = run_distributed(check_kernels, 2, timeout=400)
    subs = results[0]["substitutions"]
    assert any("layer_norm" in s for s in subs), subs
    assert "Triton kernels:" in results[0]["report"]
