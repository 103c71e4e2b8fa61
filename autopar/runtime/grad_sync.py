"""Gradient synchronisation in chunks: bucketed, asynchronous, overlapped with the rest of backward.

A parameter stored replicated on some mesh axes receives, in backward, per-rank gradient
*contributions* whose sum over those axes is its gradient (codegen's module docstring). The
parameters that need such a sum are laid out in ``Chunk``s: fixed-size (``bucket_bytes``; the
first one backward fills, 1 MiB, so that a reduction starts early, as DDP's first bucket),
contiguous, in execution order (the order of first use in forward), one chunk holding only
parameters of one dtype, device and set of axes. A chunk owns

- ``params``: one flat buffer; each parameter's ``.data`` is a view of its slot (so a chunk is the
  unit that later moves between device and host: Gemini),
- ``grads``: one flat buffer the slots' contributions are summed into.

Each use of such a parameter in the per-rank graph goes through ``param_use`` (identity in forward;
in backward, hands the contribution to its slot and passes nothing on, so autograd never writes
``.grad`` itself). When every use of every slot of a chunk has delivered its contribution, the
chunk's gradient buffer is all-reduced over its first mesh axis, asynchronously, while backward
goes on; chunks are launched in index order (the reverse of execution order, the order backward
makes them ready), the same on every rank. When backward ends (an autograd engine callback) every
launched reduction is waited for, a chunk replicated on more axes is all-reduced over each of the
others in turn (one collective per mesh axis: one group's collectives are not ordered with
another's, so the next axis starts when the previous is done), and each
parameter's ``.grad`` is set to its slot of the reduced buffer (a view: no copy), or the reduced
gradient is added to a ``.grad`` the user kept from an earlier step; a parameter none of whose uses
reached the loss keeps its ``.grad`` as it was (None at first), as on one device.

``no_sync()``: contributions are summed into the chunks across backward passes and reduced only
by the first backward outside the context, as DDP's ``no_sync`` (``.grad`` is written then).

Under Gemini (``gemini``: a ``gemini.manager.ChunkManager``, offload on) the same chunks also hold every
trainable parameter not replicated anywhere (a chunk with no axes: nothing to reduce), and move between
device and host: each contribution first asks the manager for the gradient buffer (an event it may make
room for), each chunk's reduction completes as soon as it is launched (so its buffer may leave the device
at once), and ``.grad`` is never written (the gradients stay in their chunks: ``autopar.optimizer`` steps
them and ``ParallelModule.full_grads`` reads them).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 25 * 2**20
FIRST_CHUNK_BYTES = 2**20  # the first chunk backward fills is small, so its reduction starts early (as DDP's)


@dataclass
class Slot:
    """One parameter's place in its chunk."""

    param: torch.nn.Parameter
    name: str
    offset: int  # elements into the chunk
    numel: int
    uses: int  # how many times the per-rank graph reads it (each delivers one contribution)
    arrived: int = 0
    received: bool = False  # has a contribution in the current accumulation window (else its .grad stays as is)


@dataclass
class Chunk:
    index: int
    axes: tuple[int, ...]  # mesh axes its gradients are summed over, ascending
    groups: tuple  # this rank's process group on each of ``axes``
    slots: list[Slot] = field(default_factory=list)
    params: torch.Tensor | None = None  # flat parameter storage
    grads: torch.Tensor | None = None  # flat gradient storage (allocated at the first contribution)
    numel: int = 0
    pending: int = 0  # contributions still to arrive in this backward
    handle: object = None
    wire: torch.Tensor | None = None  # what the collective reduces: the gradient buffer, or its reduce-dtype copy
    launched: bool = False
    touched: bool = False  # has contributions in the current accumulation window

    def view(self, flat: torch.Tensor, slot: Slot) -> torch.Tensor:
        return flat[slot.offset:slot.offset + slot.numel].view(slot.param.shape)


class GradSync:
    """The chunks of one ParallelModule and the state of the reduction in flight."""

    def __init__(self, mesh, bucket_bytes: int = DEFAULT_BUCKET_BYTES, reduce_dtype=torch.float32) -> None:
        self.mesh, self.bucket_bytes, self.reduce_dtype = mesh, int(bucket_bytes), reduce_dtype
        self.chunks: list[Chunk] = []
        self.slots: dict[str, Slot] = {}
        self._slot_chunk: dict[int, Chunk] = {}
        self.sync = True  # False inside no_sync()
        self._queued = False
        self._next = 0  # next chunk index to launch, in index order
        self.launches = 0  # reductions issued (for tests and the bench)
        self.gemini = None  # gemini.manager.ChunkManager when offload is on

    # ---- layout ---------------------------------------------------------------------------
    def build(self, params: list[tuple[str, torch.nn.Parameter, tuple[int, ...], int]]) -> None:
        """Lay out ``(name, param, axes, uses)`` given in execution order into chunks (backward order first).

        Called on every rank with the same list: process groups are created here, collectively.
        """
        open_chunks: dict[tuple, Chunk] = {}
        for name, param, axes, uses in reversed(params):  # backward makes the last-used ready first
            key = (axes, param.dtype, param.device)
            chunk = open_chunks.get(key)
            size = param.numel() * param.element_size()
            cap = min(FIRST_CHUNK_BYTES, self.bucket_bytes) if chunk is None or chunk.index == 0 else self.bucket_bytes
            if chunk is None or (chunk.numel and (chunk.numel * param.element_size() + size > cap)):
                chunk = Chunk(len(self.chunks), axes, tuple(self.mesh.group(a) for a in axes))
                self.chunks.append(chunk)
                open_chunks[key] = chunk
            slot = Slot(param, name, chunk.numel, param.numel(), uses)
            chunk.slots.append(slot)
            chunk.numel += slot.numel
            self.slots[name] = slot
            self._slot_chunk[id(slot)] = chunk
        for chunk in self.chunks:  # parameters become views of their chunk's flat storage
            first = chunk.slots[0].param
            chunk.params = torch.empty(chunk.numel, dtype=first.dtype, device=first.device)
            for slot in chunk.slots:
                view = chunk.view(chunk.params, slot)
                view.copy_(slot.param.data)
                slot.param.data = view

    # ---- backward --------------------------------------------------------------------------
    def contribute(self, slot: Slot, grad: torch.Tensor | None) -> None:
        """One use's gradient contribution to ``slot`` (called from ``param_use``'s backward); None: the use's
        value did not reach the loss (a weight gathered in a bucket whose whole tensor got no gradient)."""
        chunk = self._slot_chunk[id(slot)]
        if not self._queued:  # once per backward: wait for everything when the engine is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._queued = True
            for c in self.chunks:
                c.pending = sum(s.uses for s in c.slots)
                c.launched, c.handle = False, None
                for s in c.slots:
                    s.arrived = 0
            self._next = 0
        if grad is not None:  # None: this use's value never reached the loss; it counts as delivered, adds nothing
            if self.gemini is not None:
                self.gemini.grads_use(chunk)
            if not chunk.touched:
                self._open(chunk)
            view = chunk.view(chunk.grads, slot)
            if slot.received:  # a second use, or a micro-batch after the first: summed
                view.add_(grad.reshape(view.shape))
            else:  # the window's first contribution overwrites what the slot held (no zeroing pass first)
                view.copy_(grad.reshape(view.shape))
            slot.received = True
        slot.arrived += 1
        chunk.pending -= 1
        if self.sync and chunk.pending == 0:
            self._launch_ready()

    def _open(self, chunk: Chunk) -> None:
        """Start an accumulation window (keeping any ``.grad`` the user still holds). The buffer is not zeroed:
        a slot's first contribution overwrites it, and a slot none reached is zeroed before the reduction
        (``_launch``). Zeroing 13 MiB and adding into it cost GPT-2 4x256's backward 2-3 ms more than copying."""
        if self.gemini is not None:
            pass  # the manager made the buffer, zeroed (it refuses to sum into one left from an earlier step)
        elif chunk.grads is None:
            chunk.grads = torch.zeros(chunk.numel, dtype=chunk.params.dtype, device=chunk.params.device)
        else:
            for slot in chunk.slots:  # a .grad left from an earlier step still views this buffer: copy it out
                g = slot.param.grad
                if g is not None and _views(g, chunk.grads):
                    slot.param.grad = g.clone()
        for slot in chunk.slots:
            slot.received = False
        chunk.touched = True

    def _launch_ready(self) -> None:
        """Launch, in index order, every chunk whose contributions have all arrived."""
        while self._next < len(self.chunks) and self.chunks[self._next].pending <= 0:
            self._launch(self.chunks[self._next])
            self._next += 1

    def _launch(self, chunk: Chunk) -> None:
        if not chunk.touched or chunk.launched:
            return
        if self.gemini is not None:
            self.gemini.grads_use(chunk)  # the collective reads the buffer on the device
        for slot in chunk.slots:  # what it holds from an earlier window is no contribution of this one
            if not slot.received:
                chunk.view(chunk.grads, slot).zero_()
        if chunk.groups:
            chunk.wire = chunk.grads if chunk.grads.dtype == self.reduce_dtype else chunk.grads.to(self.reduce_dtype)
            chunk.handle = dist.all_reduce(chunk.wire, group=chunk.groups[0], async_op=True)
            self.launches += 1
        chunk.launched = True
        if self.gemini is not None:
            self._complete(chunk)

    def _finish(self) -> None:
        """End of backward: launch what is left (uses that produced no gradient), wait, write ``.grad``."""
        self._queued = False
        if not self.sync:
            return  # no_sync: keep summing into the chunks
        for chunk in self.chunks[self._next:]:
            self._launch(chunk)
        self._next = len(self.chunks)
        for chunk in self.chunks:
            if chunk.launched:
                self._complete(chunk)
        if self.gemini is not None:
            self.gemini.end_backward()

    def _complete(self, chunk: Chunk) -> None:
        """Wait for the chunk's reduction, reduce over its other axes, hand the gradients over."""
        if chunk.handle is not None:
            chunk.handle.wait()
            for group in chunk.groups[1:]:
                dist.all_reduce(chunk.wire, group=group)
                self.launches += 1
            if chunk.wire is not chunk.grads:
                chunk.grads.copy_(chunk.wire)
        chunk.wire = chunk.handle = None
        if self.gemini is not None:  # gradients stay in the chunk; it may leave the device now
            chunk.touched, chunk.launched = False, False
            self.gemini.reduced(chunk)
            return
        for slot in chunk.slots:
            if not slot.received:  # no use reached the loss (on any rank: all run the same graph): no gradient
                continue
            reduced = chunk.view(chunk.grads, slot)
            g = slot.param.grad
            if g is None:
                slot.param.grad = reduced
            elif _views(g, chunk.grads):  # already this buffer (cannot happen after _open), keep it
                continue
            else:
                g.add_(reduced)
        chunk.touched, chunk.launched = False, False

    @contextlib.contextmanager
    def no_sync(self):
        """Sum gradients locally across backward passes; the first backward after the context reduces them."""
        before, self.sync = self.sync, False
        try:
            yield
        finally:
            self.sync = before

    def slot_grad(self, name: str) -> torch.Tensor | None:
        """Parameter ``name``'s slot of its chunk's gradient buffer (None when it has no gradient this window)."""
        slot = self.slots[name]
        chunk = self._slot_chunk[id(slot)]
        return chunk.view(chunk.grads, slot) if chunk.grads is not None and slot.received else None

    def sizes(self) -> list[int]:
        """Bytes of each chunk."""
        return [c.numel * c.params.element_size() for c in self.chunks]


def _views(t: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether ``t`` lives in ``flat``'s storage."""
    return t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


class _ParamUse(torch.autograd.Function):
    """Identity in forward; in backward, the gradient goes to the parameter's chunk, none to the parameter."""

    @staticmethod
    def forward(ctx, param, sync, slot):
        ctx.sync, ctx.slot = sync, slot
        # no zeros for a gradient that never came: autograd still runs this backward when the op after it
        # returned None (a bucket member whose whole tensor did not reach the loss), and zeros would give the
        # parameter a .grad where one device leaves None (fuzz seeds 241, 715, 889 on (2, 2))
        ctx.set_materialize_grads(False)
        return param.view_as(param)

    @staticmethod
    def backward(ctx, grad):
        ctx.sync.contribute(ctx.slot, grad)
        return None, None, None


class ParamUse(torch.nn.Module):
    """``self.sync_<name>(param)`` in the per-rank graph: a parameter read whose gradient is synchronised."""

    def __init__(self, sync: GradSync, name: str) -> None:
        super().__init__()
        self._sync, self._name = sync, name

    def forward(self, param):
        if not torch.is_grad_enabled() or not param.requires_grad:
            return param
        return _ParamUse.apply(param, self._sync, self._sync.slots[self._name])


def chunk_count(total_bytes: float, bucket_bytes: float) -> int:
    return max(1, math.ceil(total_bytes / bucket_bytes))
