"""autopar imports, plans and runs without Triton: the kernels take their torch references."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import sys
sys.modules["triton"] = None  # "import triton" raises ImportError, as on an install without it
import torch
import autopar
from autopar import kernels
from autopar.kernels import _common
from autopar.runtime.kernel_pass import kernels_enabled
from autopar.zoo import MLP

assert not _common.HAVE_TRITON and "import triton failed" in _common.WHY_NOT
x = torch.randn(4, 32)
w, b = torch.randn(32), torch.randn(32)
torch.testing.assert_close(kernels.layer_norm(x, w, b, 1e-5), kernels.layer_norm_reference(x, w, b, 1e-5))
plan = autopar.plan(MLP(hidden=64), autopar.ClusterInfo.preset("cpu:2"), (torch.empty(8, 64, device="meta"),) * 2)
assert plan.rows
try:
    kernels_enabled("cpu", True)
except autopar.errors.AutoparError as err:
    assert "Triton is not available" in str(err)
else:
    raise AssertionError("kernels=True without Triton must be refused")
print("ok")
'''


def test_autopar_imports_plans_and_falls_back_without_triton():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
