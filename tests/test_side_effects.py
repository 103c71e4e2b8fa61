"""After tracing, planning and autoparallelize, torch's global state is as before and the original
model's parameters are not kept alive by anything autopar made."""
from __future__ import annotations

import subprocess
import sys

from tests.distributed import run_distributed

FRESH = r'''
import gc, weakref, torch
factories = {n: getattr(torch, n) for n in ("arange", "zeros", "ones", "full", "empty", "rand", "randn", "tensor")}
import autopar
from autopar import zoo
model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
refs = [weakref.ref(p) for p in model.parameters()]
plan = autopar.plan(model, autopar.ClusterInfo.preset("cpu:2"), inputs)   # the first trace of this process
assert all(getattr(torch, n) is f for n, f in factories.items()), "a torch factory is still patched"
ignored = torch.overrides.get_ignored_functions()   # first asked after tracing: must hold the real functions
assert torch.arange in ignored and torch.zeros in ignored, "the ignored-functions cache holds patched functions"
del model
gc.collect()
alive = [r for r in refs if r() is not None]
assert not alive, f"{len(alive)} of {len(refs)} parameters outlive the model after autopar.plan"
print("ok")
'''


def test_planning_leaves_torch_as_it_was_and_keeps_no_parameter():
    result = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def check_no_retained_model(rank: int, world_size: int) -> int:
    import gc
    import weakref

    import autopar
    from autopar import zoo

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    refs = [weakref.ref(p) for p in model.parameters()]
    pm = autopar.autoparallelize(model, autopar.ClusterInfo.preset("cpu:2"), inputs)
    pm(**inputs).loss.backward()
    del model
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"rank {rank}: {alive} of {len(refs)} original parameters outlive the model"
    return len(list(pm.parameters()))


def test_autoparallelize_keeps_no_reference_to_the_original_parameters():
    assert all(n > 0 for n in run_distributed(check_no_retained_model, 2, timeout=300))
