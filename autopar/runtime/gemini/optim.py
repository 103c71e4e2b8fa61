"""Adam/AdamW over chunk storage, stepped where each chunk's optimizer state lives.

``optimizer(module, torch.optim.AdamW, lr=...)`` is the optimizer to step in every mode: without
offload a plain ``torch.optim`` optimizer over ``module.parameters()``; with offload a
``ChunkOptimizer``. The update is torch's own (one ``torch.optim.AdamW`` over the module's
parameters, ``fused=True`` unless ``foreach`` or ``fused`` is given: torch's fused CPU Adam on the
host part, the fused device kernel on the device part, grouped by device by torch), elementwise

    m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    (AdamW first: p *= 1 - lr wd)

so it equals the same optimizer on one device. What changes is storage: before each step every
parameter's ``.grad`` is set to its slot of ``chunk.grads`` and its ``exp_avg``/``exp_avg_sq`` to its
slot of the chunk's flat state (``ChunkManager.optim``), on the side the policy chose (``step_use``);
after it ``.grad`` is cleared again. A parameter whose gradient never arrived is skipped, as torch does.
"""
from __future__ import annotations

import contextlib

import torch

from autopar.errors import AutoparError
from autopar.runtime.gemini.manager import STATE_KEYS

ADAMS = (torch.optim.Adam, torch.optim.AdamW)


def optimizer(module, optimizer_cls=torch.optim.AdamW, **kwargs):
    """The optimizer for ``module`` (a ParallelModule): over its chunks when offload is on."""
    manager = getattr(module, "gemini", None)
    if manager is None:
        return optimizer_cls(module.parameters(), **kwargs)
    return ChunkOptimizer(manager, optimizer_cls, **kwargs)


class ChunkOptimizer:
    """``torch.optim.Adam``/``AdamW`` whose gradients and state live in Gemini's chunks (module docstring)."""

    def __init__(self, manager, optimizer_cls=torch.optim.AdamW, **kwargs) -> None:
        if optimizer_cls not in ADAMS:
            raise AutoparError(f"with offload the optimizer steps chunks and must be torch.optim.Adam or "
                               f"torch.optim.AdamW, got {getattr(optimizer_cls, '__name__', optimizer_cls)}; "
                               f"pass offload='none' to use another optimizer")
        if kwargs.get("amsgrad"):
            raise AutoparError("amsgrad is not supported with offload (its extra state has no chunk): "
                               "pass amsgrad=False or offload='none'")
        if "fused" not in kwargs and "foreach" not in kwargs:
            kwargs["fused"] = True
        self.manager = manager
        params = [slot.param for chunk in manager.chunks for slot in chunk.slots]
        self.inner = optimizer_cls(params, **kwargs)
        self.inner._autopar_chunks = True  # steps the chunks (gemini._refuse_plain_optimizers lets it)
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self._fused = bool(kwargs.get("fused"))
        self.sides: dict[int, str] = {}  # chunk index -> where its last step ran

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Free every chunk's gradients (there is no zeroed buffer to keep: the next backward makes one)."""
        self.manager.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        """Each chunk with gradients: its units on its step side, then torch's update, host part first
        (its temporaries are host memory), then device part."""
        if closure is not None:
            raise AutoparError("ChunkOptimizer.step takes no closure")
        m = self.manager
        by_side: dict[str, list] = {"host": [], "device": []}
        for chunk in m.chunks:
            if chunk.grads is None or not any(slot.received for slot in chunk.slots):
                continue
            self.sides[chunk.index] = side = m.step_use(chunk.index)
            by_side[side].append(chunk)
        for side, chunks in by_side.items():
            if not chunks:
                continue
            for chunk in chunks:
                self._bind(chunk)
            with m.device.untracked() if side == "host" else contextlib.nullcontext():
                self.inner.step()
            for chunk in chunks:
                for slot in chunk.slots:
                    slot.param.grad = None
                m.step_done(chunk.index)

    def _bind(self, chunk) -> None:
        """Point each received slot's ``.grad`` and Adam state at the chunk's buffers, where they are now."""
        flat = self.manager.optim[chunk.index]
        for slot in chunk.slots:
            p = slot.param
            if not slot.received:
                continue
            p.grad = chunk.view(chunk.grads, slot)
            state = self.inner.state[p]
            for key in STATE_KEYS:
                state[key] = chunk.view(flat[key], slot)
            step_device = p.device if self._fused else torch.device("cpu")
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
            elif state["step"].device != step_device:
                state["step"] = state["step"].to(step_device)

    def state_dict(self):
        return self.inner.state_dict()

