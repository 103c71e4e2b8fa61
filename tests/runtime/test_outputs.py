"""``outputs=``: what the module returns, and that what nobody reads is never gathered (nor planned)."""
from __future__ import annotations

import copy
import re

import pytest
import torch

import autopar
from autopar import zoo
from autopar.errors import AutoparError
from tests.distributed import run_distributed


def test_loss_only_plans_no_logits_gather():
    model, inputs = zoo.build("gpt2", "124m", device="meta")
    ids = torch.empty(8, 1024, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids, "labels": ids, "use_cache": False}
    cluster = autopar.ClusterInfo.preset("8xH100")
    every, loss = (autopar.plan(model, cluster, inputs, outputs=o) for o in ("all", "loss"))
    out_every = every.row("output").strategy.inputs
    out_loss = loss.row("output").strategy.inputs
    assert len(out_every) == 2 and len(out_loss) == 1  # logits no longer leave the graph
    assert loss.sharding.comm_time < every.sharding.comm_time  # and their gather is no longer priced
    with pytest.raises(AutoparError, match="no field 'hidden'"):
        autopar.plan(model, cluster, inputs, outputs=["loss", "hidden"])


def check_outputs(rank: int, world_size: int) -> dict:
    from tests.test_autoparallelize import ATOL, RTOL

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    ref = copy.deepcopy(model)
    want = ref(**inputs)
    want.loss.backward()
    loss_only = autopar.autoparallelize(copy.deepcopy(model), cluster, inputs, outputs="loss")
    got = loss_only(**inputs)
    assert got.logits is None
    torch.testing.assert_close(got.loss, want.loss, rtol=RTOL, atol=ATOL)
    got.loss.backward()
    grads = loss_only.full_grads()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    local = autopar.autoparallelize(copy.deepcopy(model), cluster, inputs, outputs="local")
    out = local(**inputs)
    torch.testing.assert_close(out.logits.full(), want.logits.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out.loss, want.loss, rtol=RTOL, atol=ATOL)
    return {"code": loss_only.code, "spec": str(out.logits.spec), "local": tuple(out.logits.local.shape)}


def test_loss_only_and_local_outputs_on_2x2():
    results = run_distributed(check_outputs, 4, timeout=300)
    code = results[0]["code"]
    # the loss alone leaves (summed over ranks, or summed while backward runs: codegen's sum_later)
    assert re.search(r"return pytree\.tree_unflatten\(\((scale_grad|sum_later_\w+),\), self\._out_spec\)", code)
    # the logits (lm_head's output, ``linear``) are not gathered to leave; the loss may still read them whole
    # (``float_1``, their fp32 copy: cross-entropy run replicated costs no loss all-reduce, which a batch-split
    # one pays, so on GPT-2 tiny's 128-word vocabulary the planner may gather them)
    assert "self.comm(linear," not in code
    assert results[0]["spec"] != "RRR"  # a local output stays sharded
