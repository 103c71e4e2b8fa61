"""The device Gemini places chunks on, and the memory statistics of the warm-up iteration.

Two devices with one interface (``allocated``, ``peak``, ``reset_peak``, ``upload``, ``download``,
``untracked``):

- ``CudaDevice``: real memory, ``torch.cuda.memory_allocated`` / ``max_memory_allocated``; chunks
  move with ``.to(device, non_blocking=True)`` from pinned host buffers.
- ``TrackedDevice``: a device simulated on CPU, so the placement logic runs and is tested here. A
  ``TorchDispatchMode``: every storage an op allocates while it is active (forward, backward and
  the optimizer step: the autograd engine carries the mode into backward) counts as device bytes
  until it is freed, as do the chunk buffers the manager uploads; what the manager allocates inside
  ``untracked()`` is host memory. With a ``cap``, the bytes are checked after every op and going
  over raises ``DeviceMemoryError`` naming the op: the cap is asserted at every op.

``MemStats``: the warm-up iteration numbers the chunk events (a forward op's fetch, a backward op's
read of a saved parameter, a gradient contribution, an optimizer step) and records, for the interval
after each event, the peak of non-model data = device bytes in use - bytes of chunks on the device.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autopar.errors import AutoparError


class DeviceMemoryError(AutoparError):
    """The simulated device went over its cap."""


def _storages(tree) -> list:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class TrackedDevice(TorchDispatchMode):
    """A simulated device on CPU: the bytes of the live storages it holds (module docstring)."""

    is_cuda = False

    def __init__(self, cap: float | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cap, self.device = cap, torch.device(device)
        self._live: dict[int, int] = {}  # storage data_ptr -> bytes
        self._allocated = 0
        self._peak = 0
        self.max_allocated = 0  # over the device's whole life (for tests and the bench)
        self.ops = 0  # ops seen while active
        self._untracked = 0

    # ---- accounting ------------------------------------------------------------------------
    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage as device memory until it is freed (idempotent)."""
        self._track(tensor.untyped_storage())

    def _track(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live[key] = size
        self._allocated += size
        weakref.finalize(storage, self._free, key)
        self._peak = max(self._peak, self._allocated)
        self.max_allocated = max(self.max_allocated, self._allocated)

    def _free(self, key: int) -> None:
        self._allocated -= self._live.pop(key, 0)

    def allocated(self) -> int:
        return self._allocated

    def peak(self) -> int:
        return self._peak

    def reset_peak(self) -> None:
        self._peak = self._allocated

    @contextlib.contextmanager
    def untracked(self):
        """What is allocated inside is host memory."""
        self._untracked += 1
        try:
            yield
        finally:
            self._untracked -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._untracked:
            inputs = {s.data_ptr() for s in _storages((args, kwargs))}
            for storage in _storages(out):  # views and in-place results share an input's storage: not new
                if storage.data_ptr() not in inputs:
                    self._track(storage)
            self.ops += 1
            if self.cap is not None and self._allocated > self.cap:
                raise DeviceMemoryError(
                    f"the simulated device holds {self._allocated} bytes after {func}, over its cap of "
                    f"{int(self.cap)} bytes: raise memory_budget, use offload='auto', or a smaller batch")
        return out

    # ---- moving chunk buffers ------------------------------------------------------------------
    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """A device copy of ``host``."""
        dev = host.clone()
        self.track(dev)
        return dev

    def zeros(self, numel: int, dtype) -> torch.Tensor:
        dev = torch.zeros(numel, dtype=dtype, device=self.device)
        self.track(dev)
        return dev

    def download(self, dev: torch.Tensor) -> torch.Tensor:
        """A host copy of ``dev``."""
        with self.untracked():
            return dev.clone()

    def host_zeros(self, numel: int, dtype) -> torch.Tensor:
        with self.untracked():
            return torch.zeros(numel, dtype=dtype)

    def on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._live


class CudaDevice:
    """Real device memory (module docstring)."""

    is_cuda = True

    def __init__(self, device: torch.device, cap: float | None = None) -> None:
        self.device, self.cap = torch.device(device), cap
        self.max_allocated = 0

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        peak = torch.cuda.max_memory_allocated(self.device)
        self.max_allocated = max(self.max_allocated, peak)
        return peak

    def reset_peak(self) -> None:
        self.peak()
        torch.cuda.reset_peak_memory_stats(self.device)

    def untracked(self):
        return contextlib.nullcontext()

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device, non_blocking=True)

    def zeros(self, numel: int, dtype) -> torch.Tensor:
        return torch.zeros(numel, dtype=dtype, device=self.device)

    def download(self, dev: torch.Tensor) -> torch.Tensor:
        host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=True)
        host.copy_(dev)  # blocking: the host copy is read (CPU Adam) or the device buffer freed next
        return host

    def host_zeros(self, numel: int, dtype) -> torch.Tensor:
        return torch.zeros(numel, dtype=dtype, pin_memory=True)

    def on_device(self, tensor: torch.Tensor) -> bool:
        dev = tensor.device
        return dev.type == "cuda" and (self.device.index is None or dev.index == self.device.index)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class MemStats:
    """Per chunk event of the warm-up iteration: what it needed and the non-model peak after it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []  # event i: the (chunk index, kind) units it needs on the device
        self.non_model: list[int] = []  # event i: peak non-model bytes until event i + 1
        self.done = False  # the warm-up iteration is over: the policy may read the statistics

    def record(self, units: tuple) -> None:
        self.events.append(units)
        self.non_model.append(0)

    def sample(self, index: int, non_model: int) -> None:
        if 0 <= index < len(self.non_model):
            self.non_model[index] = max(self.non_model[index], int(non_model))

    def peak(self) -> int:
        return max(self.non_model, default=0)
