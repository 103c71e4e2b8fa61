"""Triton kernels, each beside its torch reference (installed as ``autopar.kernels``).

Each public function runs its Triton kernel (forward and backward through an autograd
Function) on CUDA tensors, or on CPU tensors when imported with ``TRITON_INTERPRET=1``
(Triton's interpreter, for tests); otherwise, and for inputs a kernel does not support, it
falls back to its plain-torch reference (``*_reference``).
"""
from .attention import attention_reference, flash_attention
from .cross_entropy import cross_entropy, cross_entropy_reference
from .norms import layer_norm, layer_norm_reference, rms_norm, rms_norm_reference
from .softmax import softmax, softmax_reference

__all__ = [
    "flash_attention", "layer_norm", "rms_norm", "softmax", "cross_entropy",
    "attention_reference", "layer_norm_reference", "rms_norm_reference", "softmax_reference",
    "cross_entropy_reference",
]
