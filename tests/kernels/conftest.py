"""Kernel tests run in Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before any
``@triton.jit`` function is decorated, so it is set here, at import time."""
import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# If something imported the kernels before this conftest (compiled mode), re-decorate them.
if "autopar.kernels._common" in sys.modules and not sys.modules["autopar.kernels._common"].INTERPRETED:
    for name in ("_common", "attention", "norms", "softmax", "cross_entropy", ""):
        module = sys.modules.get(f"autopar.kernels.{name}".rstrip("."))
        if module is not None:
            importlib.reload(module)


@pytest.fixture(autouse=True)
def seed():
    """A fresh seed per test, printed so that a failure can be replayed with torch.manual_seed."""
    value = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    print(f"seed = {value}")
    return value
