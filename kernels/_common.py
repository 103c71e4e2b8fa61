"""What every kernel wrapper asks before launching: can Triton run on these tensors, and how.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled for a GPU or
run by its CPU interpreter (``TRITON_INTERPRET=1``), so the kernel modules record the mode
they were imported under (``INTERPRETED``). A kernel runs on

- CUDA tensors when the kernels were compiled (not interpreted), and
- CPU tensors when the kernels were imported with ``TRITON_INTERPRET=1``;

everything else falls back to the plain-torch reference beside each kernel. Without a working
Triton (a CPU-only install may lack one) the kernel modules still import: ``triton.jit`` is a
stand-in that keeps the function as it is, ``runnable`` is always False, so every call takes
the reference, and ``autopar.runtime.kernel_pass`` says kernels are off and why.
"""
from __future__ import annotations

import os

import torch


class _Missing:
    """Stands in for ``triton`` and ``triton.language`` when Triton cannot be imported: ``jit`` keeps the
    function undecorated (it is never launched: ``runnable`` is False); anything else says what is missing."""

    def __init__(self, name: str, why: str) -> None:
        self.__name__, self.why = name, why

    def jit(self, fn=None, **_options):
        return fn if fn is not None else (lambda f: f)

    constexpr = object  # annotations of kernel arguments

    def __getattr__(self, attr: str):
        raise RuntimeError(f"{self.__name__}.{attr}: Triton is not available ({self.why}); the kernels fall back to "
                           f"their torch references. Install triton to use them.")


try:  # triton is a dependency, but a CPU-only install may lack a working one
    import triton
    import triton.language as tl

    HAVE_TRITON, WHY_NOT = True, ""
except Exception as exc:  # exercised by tests/kernels/test_without_triton.py
    HAVE_TRITON, WHY_NOT = False, f"import triton failed: {exc!r}"
    triton, tl = _Missing("triton", WHY_NOT), _Missing("triton.language", WHY_NOT)

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
