"""Triton kernels, each beside its torch reference (installed as ``autopar.kernels``)."""
