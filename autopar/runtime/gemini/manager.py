"""The chunk manager: gradient-sync chunks (grad_sync.py) that also move between device and host.

One abstraction for communication and placement: the chunks are grad_sync's ``Chunk``s (contiguous,
in execution order; each parameter's ``.data`` a view of its slot of ``chunk.params``). The manager
gives each chunk a state machine (states.py) and three *units* that the policy (placement.py) places
on the device or the host independently: ``params`` (``chunk.params``), ``grads`` (``chunk.grads``)
and ``optim`` (the optimizer's flat state buffers, ``self.optim[index]``). Moving a unit copies its
buffer to the other side and re-points every view of it (each slot's ``param.data``).

Chunk events, in the order one iteration makes them (forward start -> next forward start):

- ``forward_use(names)``: before a forward op, its parameters' chunks on the device, pinned (COMPUTE);
  the chunks pinned by the previous op are released.
- ``backward_use(index)``: autograd unpacks a saved tensor that views a chunk (saved.py saved where
  it was, not the tensor, so autograd never keeps an evicted buffer alive): the chunk comes back to
  the device, pinned until two reads later.
- ``grads_use(chunk)``: a gradient contribution (or the reduction) needs the chunk's gradient buffer.
- ``step_use(index, side)``: the optimizer steps the chunk on ``side``.

Before each event the policy makes room; the warm-up iteration records, per event, the units it
needed and the non-model peak after it (memory.MemStats), which ``next_use`` and the auto policy read.
"""
from __future__ import annotations

import bisect
import math

import torch

from autopar.errors import AutoparError
from autopar.runtime.gemini.memory import MemStats
from autopar.runtime.gemini.states import ChunkState, StateMachine

KINDS = ("params", "grads", "optim")
STATE_KEYS = ("exp_avg", "exp_avg_sq")  # the flat optimizer state of Adam/AdamW, per chunk


class ChunkManager:
    def __init__(self, grad_sync, device, policy) -> None:
        self.sync, self.device, self.policy = grad_sync, device, policy
        grad_sync.gemini = self
        self.stats = MemStats()
        self.where: dict[tuple[int, str], str] = {}  # (chunk index, kind) -> "device" | "host"
        self.optim: dict[int, dict[str, torch.Tensor]] = {}  # chunk index -> flat optimizer state
        self.machines: list[StateMachine] = []
        self.traffic = {"h2d": 0, "d2h": 0}  # bytes moved each way
        self.evictions = 0
        self.pinned: set[int] = set()
        self._reduced: set[int] = set()  # reduced while pinned: HOLD_AFTER_BWD when released
        self._last_read: int | None = None
        self._next: dict[tuple[int, str], list[int]] | None = None
        self.t, self.in_iteration, self.on_schedule = -1, False, True
        self.evaluating = False  # a forward without gradients: its events are not the iteration's
        self.iterations = 0
        self.off_schedule_iterations = 0

    # ---- setup -------------------------------------------------------------------------------
    def attach(self) -> None:
        """After ``grad_sync.build``: every chunk starts in HOLD with its parameters on the host (codegen
        made them there), and the policy places them."""
        chunks = self.sync.chunks
        self._by_name = {slot.name: chunk for chunk in chunks for slot in chunk.slots}
        self.machines = [StateMachine(c.index) for c in chunks]
        for chunk in chunks:
            self.where[(chunk.index, "params")] = "device" if self.device.on_device(chunk.params) else "host"
        self.policy.setup(self)

    @property
    def chunks(self):
        return self.sync.chunks

    def chunk_of(self, name: str):
        return self._by_name[name]

    # ---- bytes ---------------------------------------------------------------------------------
    def unit_bytes(self, index: int, kind: str) -> int:
        chunk = self.chunks[index]
        size = chunk.numel * chunk.params.element_size()
        return size * len(STATE_KEYS) if kind == "optim" else size

    def model_bytes(self) -> int:
        """Bytes of model data (parameters, gradients, optimizer state) on the device now."""
        return sum(self.unit_bytes(i, kind) for (i, kind), side in self.where.items() if side == "device")

    def full_model_bytes(self) -> int:
        """Bytes of all model data with Adam's state: what the device holds when nothing is offloaded."""
        return sum(self.unit_bytes(c.index, kind) for c in self.chunks for kind in KINDS)

    # ---- moving units --------------------------------------------------------------------------
    def _buffers(self, chunk, kind: str) -> dict[str, torch.Tensor]:
        if kind == "params":
            return {"params": chunk.params}
        if kind == "grads":
            return {} if chunk.grads is None else {"grads": chunk.grads}
        return dict(self.optim.get(chunk.index, {}))

    def _set(self, chunk, kind: str, buffers: dict[str, torch.Tensor]) -> None:
        if kind == "params":
            chunk.params = buffers["params"]
            for slot in chunk.slots:
                slot.param.data = chunk.view(chunk.params, slot)
        elif kind == "grads":
            chunk.grads = buffers["grads"]
        else:
            self.optim[chunk.index] = buffers

    def move(self, index: int, kind: str, to: str) -> None:
        """Put one unit on ``to`` ("device" or "host"); a unit not yet allocated is made there, zeroed."""
        chunk = self.chunks[index]
        side = self.where.get((index, kind))
        if side == to:
            return
        old = self._buffers(chunk, kind)
        if side is None:  # allocate: gradients at their first contribution, optimizer state at the first step
            make = self.device.zeros if to == "device" else self.device.host_zeros
            keys = ("grads",) if kind == "grads" else STATE_KEYS
            new = {k: make(chunk.numel, chunk.params.dtype) for k in keys}
        else:
            copy = self.device.upload if to == "device" else self.device.download
            new = {k: copy(v) for k, v in old.items()}
            self.traffic["h2d" if to == "device" else "d2h"] += self.unit_bytes(index, kind)
        if to == "host" and side == "device":
            self.evictions += 1
        del old
        self._set(chunk, kind, new)
        self.where[(index, kind)] = to

    def drop(self, index: int, kind: str) -> None:
        """Free a unit (gradients at ``zero_grad``)."""
        if kind == "grads":
            self.chunks[index].grads = None
        self.where.pop((index, kind), None)

    def on_device(self, index: int, kind: str) -> bool:
        return self.where.get((index, kind)) == "device"

    # ---- the schedule --------------------------------------------------------------------------
    def begin_iteration(self) -> None:
        """A forward with gradients starts an iteration; the first one's events are the warm-up's."""
        self.end_iteration()
        self.t, self.in_iteration, self.on_schedule = -1, True, True

    def end_iteration(self) -> None:
        if not self.in_iteration:
            return
        self._sample()
        if not self.on_schedule:
            self.off_schedule_iterations += 1
        self.in_iteration = False
        self.iterations += 1
        if not self.stats.done:
            self.stats.done = True
            self._next = {}
            for i, units in enumerate(self.stats.events):
                for unit in units:
                    self._next.setdefault(unit, []).append(i)

    def _sample(self) -> None:
        if self.in_iteration and self.on_schedule and self.t >= 0:
            self.stats.sample(self.t, self.device.peak() - self.model_bytes())

    def _event(self, units: tuple, to_host: tuple = ()) -> None:
        """One chunk event: sample the interval that ends, make room, bring ``units`` to the device (and
        ``to_host`` to the host), then start the next interval's peak."""
        if self.in_iteration and not self.evaluating:
            self._sample()
            self.t += 1
            if not self.stats.done:
                self.stats.record(units)
            elif self.t >= len(self.stats.events) or self.stats.events[self.t] != units:
                self.on_schedule = False  # another iteration than the warm-up's: no look-ahead until the next
        self.policy.make_room(self, units)
        for index, kind in units:
            self.move(index, kind, "device")
        for index, kind in to_host:
            self.move(index, kind, "host")
        self.device.reset_peak()

    def next_use(self, unit: tuple[int, str]) -> float:
        """Events until ``unit`` is next needed on the device (the warm-up's schedule, wrapping into the
        next iteration); inf when never, or when this iteration left the schedule."""
        uses = (self._next or {}).get(unit)
        if not uses or not self.on_schedule:
            return math.inf
        k = bisect.bisect_right(uses, self.t)
        return uses[k] - self.t if k < len(uses) else uses[0] + len(self.stats.events) - self.t

    def non_model_peak(self) -> int:
        """The non-model bytes the interval after the current event needs (warm-up statistics)."""
        if not self.stats.done:
            return 0
        if self.on_schedule and 0 <= self.t < len(self.stats.non_model):
            return self.stats.non_model[self.t]
        return self.stats.peak()

    def evictable(self, keep: tuple) -> list[tuple[int, str]]:
        """Units on the device that the event needing ``keep`` may move to the host."""
        return [u for u, side in self.where.items()
                if side == "device" and u not in keep and not (u[1] == "params" and u[0] in self.pinned)]

    # ---- events ------------------------------------------------------------------------------
    def forward_use(self, names: tuple[str, ...]) -> None:
        indices = sorted({self._by_name[n].index for n in names})
        for index in sorted(self.pinned - set(indices)):
            self._release(index)
        self._event(tuple((i, "params") for i in indices))
        for index in indices:
            self.machines[index].to(ChunkState.COMPUTE)
            self.pinned.add(index)

    def begin_forward(self) -> None:
        """A forward with gradients starts an iteration; one without (evaluation) keeps out of its schedule."""
        self.evaluating = not torch.is_grad_enabled()
        if not self.evaluating:
            self.begin_iteration()

    def end_forward(self) -> None:
        for index in sorted(self.pinned):
            self._release(index)
        self._last_read = None
        if self.evaluating:
            self.device.reset_peak()  # the evaluation's peak is no interval's of the iteration
        self.evaluating = False

    def backward_use(self, index: int) -> None:
        for other in sorted(self.pinned - {index, self._last_read}):
            self._release(other)
        self._event(((index, "params"),))
        self.machines[index].to(ChunkState.COMPUTE)
        self.pinned.add(index)
        self._last_read = index

    def grads_use(self, chunk) -> None:
        if chunk.grads is not None and not chunk.touched:
            raise AutoparError(
                "with offload, gradients are not accumulated across backward passes: call "
                "optimizer.zero_grad() (the optimizer from autopar.optimizer) after each optimizer step, "
                "before the next backward")
        self._event(((chunk.index, "grads"),))

    def reduced(self, chunk) -> None:
        """The chunk's gradients are complete and summed over the mesh."""
        if chunk.index in self.pinned:
            self._reduced.add(chunk.index)
        else:
            self.machines[chunk.index].to(ChunkState.HOLD_AFTER_BWD)
        self.policy.after_reduce(self, chunk.index)

    def end_backward(self) -> None:
        for index in sorted(self.pinned):
            self._release(index)
        self._last_read = None

    def _release(self, index: int) -> None:
        self.pinned.discard(index)
        done = index in self._reduced
        self._reduced.discard(index)
        self.machines[index].to(ChunkState.HOLD_AFTER_BWD if done else ChunkState.HOLD)
        self.policy.released(self, index)

    def step_use(self, index: int) -> str:
        """Before the optimizer steps chunk ``index``: its units on the side the policy picks (returned)."""
        side = self.policy.step_side(self, index)
        units = tuple((index, kind) for kind in KINDS)
        self._event(units, ()) if side == "device" else self._event((), units)
        return side

    def step_done(self, index: int) -> None:
        self.machines[index].to(ChunkState.HOLD)
        self.policy.after_step(self, index)

    def zero_grad(self) -> None:
        for chunk in self.chunks:
            self.drop(chunk.index, "grads")
            chunk.touched = False
            if self.machines[chunk.index].state is ChunkState.HOLD_AFTER_BWD:
                self.machines[chunk.index].to(ChunkState.HOLD)

    # ---- for tests and reports ---------------------------------------------------------------------
    def states(self) -> list[list[ChunkState]]:
        return [list(m.history) for m in self.machines]

    def summary(self) -> dict:
        return {"chunks": len(self.chunks), "chunk_bytes": [self.unit_bytes(c.index, "params") for c in self.chunks],
                "events": len(self.stats.events), "non_model_peak": self.stats.peak(), "traffic": dict(self.traffic),
                "evictions": self.evictions, "off_schedule_iterations": self.off_schedule_iterations}

