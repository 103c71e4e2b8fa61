"""Gemini: parameters, gradients and optimizer state in chunks that move between device and host.

    pm = autopar.autoparallelize(model, cluster, inputs, offload="auto", memory_budget=cap)
    opt = autopar.optimizer(pm, torch.optim.AdamW, lr=1e-3)
    with pm.gemini.device:          # on CPU: the simulated device (tracked bytes, cap asserted per op)
        pm(**inputs).loss.backward()
        opt.step()
        opt.zero_grad()

The chunks are the gradient-sync chunks (runtime/grad_sync.py); ``manager.ChunkManager`` gives each a
state machine (states.py) and places its units by a policy (placement.py); the warm-up iteration's
memory statistics (memory.py) drive the auto policy; ``optim.ChunkOptimizer`` steps the chunks where
their optimizer state lives. Codegen (runtime/codegen.py) reads every trainable parameter through its
chunk when offload is on, and puts a ``gemini_fetch`` before each op that reads parameters.

The planner prices the share of the state on the host (solver/offload.py) and ``autoparallelize`` runs
what the plan chose: no Gemini when it offloads nothing, the auto policy for ``offload="auto"``, the
static split for ``{"params": f, "optimizer": g}``. Not yet: chunks are not gathered whole across the
data-parallel axis (a sharded parameter's chunk holds this rank's shard, gathered weight by weight); no
prefetch on a side stream; no composition with activation checkpointing or ``no_sync``.
"""
from __future__ import annotations

import weakref
from functools import partial

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from autopar.errors import AutoparError
from autopar.runtime.gemini.manager import ChunkManager
from autopar.runtime.gemini.memory import CudaDevice, DeviceMemoryError, MemStats, TrackedDevice
from autopar.runtime.gemini.optim import ChunkOptimizer, optimizer
from autopar.runtime.gemini.placement import AutoPlacement, StaticPlacement, make_policy
from autopar.runtime.gemini.saved import pack, unpack
from autopar.runtime.gemini.states import ChunkState, ChunkStateError, is_legal

__all__ = ["AutoPlacement", "ChunkFetch", "ChunkManager", "ChunkOptimizer", "ChunkState", "ChunkStateError",
           "CudaDevice", "DeviceMemoryError", "MemStats", "StaticPlacement", "TrackedDevice", "attach",
           "is_legal", "optimizer"]


class ChunkFetch(torch.nn.Module):
    """``self.gemini_fetch(('h.0.mlp.c_fc.weight', ...))`` before an op: its parameters' chunks on the
    device, pinned while it runs (identity: returns nothing)."""

    def __init__(self, sync) -> None:
        super().__init__()
        self._sync = sync

    def forward(self, names: tuple[str, ...]) -> None:
        self._sync.gemini.forward_use(names)


# Parameters whose gradients live in Gemini's chunks (``.grad`` is never written): id -> parameter.
_CHUNKED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_guard = None


def _refuse_plain_optimizers(optimizer, _args, _kwargs) -> None:
    """A global optimizer step pre-hook: a torch optimizer over chunked parameters would see no ``.grad``
    and silently step nothing; refuse it, saying what to use (ChunkOptimizer's own is marked)."""
    if getattr(optimizer, "_autopar_chunks", False):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if _CHUNKED.get(id(p)) is p:
                raise AutoparError(f"{type(optimizer).__name__} steps parameters whose gradients live in Gemini's "
                                   f"chunks (offload is on), so it would update nothing; build the optimizer with "
                                   f"autopar.optimizer(module, {type(optimizer).__name__}, ...)")


def attach(module, grad_sync, offload, cap: float | None, device: torch.device) -> ChunkManager:
    """Give ``module`` (a ParallelModule whose chunks are built) its chunk manager and forward hooks."""
    global _guard
    for chunk in grad_sync.chunks:
        for slot in chunk.slots:
            _CHUNKED[id(slot.param)] = slot.param
    if _guard is None:
        _guard = register_optimizer_step_pre_hook(_refuse_plain_optimizers)
    if device.type == "cuda":
        if cap is None:
            cap = torch.cuda.get_device_properties(device).total_memory
        dev = CudaDevice(device, cap)
    else:
        dev = TrackedDevice(cap, device)
    manager = ChunkManager(grad_sync, dev, make_policy(offload, cap, dev.is_cuda))
    manager.attach()
    hooks: list = []

    def before(_module, _args):
        manager.begin_forward()
        saved = torch.autograd.graph.saved_tensors_hooks(partial(pack, manager), partial(unpack, manager))
        saved.__enter__()
        hooks.append(saved)

    def after(_module, _args, _out):
        if hooks:
            hooks.pop().__exit__(None, None, None)
        manager.end_forward()

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after, always_call=True)
    module.gemini = manager
    return manager
