"""What every kernel wrapper asks before launching: can Triton run on these tensors, and how.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled for a GPU or
run by its CPU interpreter (``TRITON_INTERPRET=1``), so the kernel modules record the mode
they were imported under (``INTERPRETED``). A kernel runs on

- CUDA tensors when the kernels were compiled (not interpreted), and
- CPU tensors when the kernels were imported with ``TRITON_INTERPRET=1``;

everything else falls back to the plain-torch reference beside each kernel.
"""
from __future__ import annotations

import os

import torch

try:  # triton is a dependency, but a CPU-only install may lack a working one
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
except Exception:  # pragma: no cover - exercised only without triton
    HAVE_TRITON = False

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def runnable(*tensors: torch.Tensor | None) -> bool:
    """True when Triton can run on all these tensors (same device kind, float dtypes for floats)."""
    if not HAVE_TRITON:
        return False
    present = [t for t in tensors if t is not None]
    if not present:
        return False
    want_cuda = not INTERPRETED
    for t in present:
        if t.is_cuda != want_cuda or (not t.is_cuda and t.device.type != "cpu"):
            return False
        if t.is_floating_point() and t.dtype not in FLOAT_DTYPES:
            return False
    return True


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def num_programs(device: torch.device, per_sm: int = 4, interpreted_cap: int = 4) -> int:
    """How many persistent programs a row-looping reduction kernel launches."""
    if device.type != "cuda":
        return interpreted_cap
    return torch.cuda.get_device_properties(device).multi_processor_count * per_sm


def upcast_dots(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 tiles as raw uint16 bits; there, dots upcast to fp32 first."""
    return INTERPRETED and dtype == torch.bfloat16


if HAVE_TRITON:

    @triton.jit
    def dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """tl.dot with fp32 accumulation; PREC "ieee" keeps fp32 inputs exact (no tf32), anything
        else is Triton's default; UPCAST (interpreter, bf16 only) multiplies in fp32."""
        if UPCAST:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif PREC == "ieee":
            out = tl.dot(a, b, input_precision="ieee")
        else:
            out = tl.dot(a, b)
        return out
