"""Measure the bytes held for backward: what ``NodeProfile.saved_bytes`` and ``CheckpointPlan.kept`` predict.

"Saved bytes" are the distinct storages (counted whole, once, by ``untyped_storage()``) that
are alive at the end of forward because backward needs them:

- every tensor autograd saves (seen by a ``saved_tensors_hooks`` pack hook), and
- every input of a non-reentrant checkpoint region (``checkpoint_regions``): the region keeps
  its inputs to recompute, and saves nothing else (its own hooks, innermost, hide its ops
  from ours);

less the storages of the module's parameters, buffers and other tensor attributes, which are
held anyway. A storage freed before forward ends (saved by a branch the outputs do not reach)
does not count. The probe holds weak references only, so it never keeps a tensor alive.

    with SavedTensorsProbe(module) as probe:
        loss = module(**inputs).loss
    held = probe.nbytes()          # while ``loss`` (and so the autograd graph) is alive
    loss.backward()
"""
from __future__ import annotations

import weakref

import torch

from autopar.runtime.checkpoint_regions import region_modules


class SavedTensorsProbe:
    """Context manager over one forward of ``module`` (see the module docstring)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._held = {_ptr(t) for t in _held_tensors(module)}
        self._seen: dict[int, tuple[int, list]] = {}  # storage ptr -> (nbytes, weak refs to its tensors)
        self._handles: list = []
        self._hooks = None

    def _record(self, t: torch.Tensor) -> None:
        ptr = _ptr(t)
        if ptr in self._held or t.device.type == "meta":
            return
        entry = self._seen.get(ptr)
        if entry is None or not _alive(entry[1]):  # new, or a freed storage's address reused
            entry = self._seen[ptr] = (t.untyped_storage().nbytes(), [])
        entry[1].append(weakref.ref(t))

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._record(t)
        return t

    def _region_inputs(self, _module, args) -> None:
        torch.utils._pytree.tree_map_only(torch.Tensor, self._record, args)

    def __enter__(self) -> SavedTensorsProbe:
        self._handles = [m.register_forward_pre_hook(self._region_inputs) for m in region_modules(self.module)]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:  # backward's recomputation must not count
            handle.remove()

    def nbytes(self) -> int:
        """Bytes of the distinct storages recorded and still alive."""
        return sum(size for size, refs in self._seen.values() if _alive(refs))


def _alive(refs) -> bool:
    return any(r() is not None for r in refs)


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _held_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    out = [*module.parameters(), *module.buffers()]
    for sub in module.modules():
        out.extend(v for v in vars(sub).values() if isinstance(v, torch.Tensor))
    return out
