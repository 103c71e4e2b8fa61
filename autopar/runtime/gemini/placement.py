"""Where each chunk unit lives: the static and the auto placement policies.

A policy answers four questions the manager asks (manager.py):
``make_room(m, units)`` before an event, ``released(m, i)`` when an op stops reading chunk i,
``after_reduce(m, i)`` when its gradients are complete, ``step_side(m, i)`` where the optimizer steps
it (and ``after_step``).

- ``StaticPlacement(params, optimizer)``: a fixed fraction (by bytes, in execution order) of the
  chunks keeps its parameters on the host, fetched for each op and sent back after it; a fixed
  fraction keeps its optimizer state on the host, where the CPU Adam steps it (its gradients go to the
  host once reduced). Nothing else moves; no cap is enforced.
- ``AutoPlacement(cap)``: before each event, evict until
  ``model bytes on device + bytes the event brings + non-model peak after it <= cap``, choosing the unit
  whose next use is furthest in the future (Belady's rule, on the warm-up's schedule). During the
  warm-up, which has no statistics yet, every unit the event does not need leaves the device. The
  optimizer state stays on the host (CPU Adam) unless all model data plus the non-model peak fits the
  cap, in which case nothing ever leaves the device. A ``headroom`` fraction of the cap is kept free
  for what the warm-up cannot see: 1 % on the simulated device, 10 % on CUDA, whose caching allocator
  reserves more than it hands out (fragmentation).
"""
from __future__ import annotations

from autopar.errors import AutoparError


def _first_fraction(m, fraction: float) -> set[int]:
    """Chunk indices, in execution order (grad_sync numbers them in backward order), covering ``fraction``
    of the parameter bytes."""
    order = sorted(m.chunks, key=lambda c: -c.index)
    total = sum(m.unit_bytes(c.index, "params") for c in order)
    picked, acc = set(), 0
    for chunk in order:
        if acc >= fraction * total - 1e-9 * total or fraction <= 0:
            break
        picked.add(chunk.index)
        acc += m.unit_bytes(chunk.index, "params")
    return picked


class StaticPlacement:
    def __init__(self, params: float, optimizer: float) -> None:
        self.params_fraction, self.optim_fraction = params, optimizer
        self.params_host: set[int] = set()
        self.optim_host: set[int] = set()

    def __repr__(self) -> str:
        return f"StaticPlacement(params={self.params_fraction}, optimizer={self.optim_fraction})"

    def setup(self, m) -> None:
        self.params_host = _first_fraction(m, self.params_fraction)
        self.optim_host = _first_fraction(m, self.optim_fraction)
        for chunk in m.chunks:
            m.move(chunk.index, "params", "host" if chunk.index in self.params_host else "device")

    def make_room(self, m, units) -> None:
        return None

    def released(self, m, index: int) -> None:
        if index in self.params_host:
            m.move(index, "params", "host")

    def after_reduce(self, m, index: int) -> None:
        if index in self.optim_host:
            m.move(index, "grads", "host")

    def step_side(self, m, index: int) -> str:
        return "host" if index in self.optim_host else "device"

    def after_step(self, m, index: int) -> None:
        m.move(index, "params", "host" if index in self.params_host else "device")


class AutoPlacement:
    def __init__(self, cap: float, headroom: float = 0.01) -> None:
        self.cap = float(cap)
        self.room = self.cap * (1.0 - headroom)  # what model data plus non-model data may use
        self.resident: bool | None = None  # decided at the first step: does all model data fit?

    def __repr__(self) -> str:
        return f"AutoPlacement(cap={int(self.cap)})"

    def setup(self, m) -> None:
        for chunk in m.chunks:
            m.move(chunk.index, "params", "host")

    def make_room(self, m, units) -> None:
        keep = tuple(units)
        if not m.stats.done:  # warm-up: keep only what the event needs, so the non-model sample is clean
            for unit in m.evictable(keep):
                m.move(*unit, "host")
            return
        bringing = sum(m.unit_bytes(*u) for u in keep if not m.on_device(*u))
        need = bringing + m.non_model_peak()
        while m.model_bytes() + need > self.room:
            victims = m.evictable(keep)
            if not victims:
                break  # nothing left to evict: the device goes over (a TrackedDevice raises at the op)
            victim = max(victims, key=lambda u: (m.next_use(u), m.unit_bytes(*u)))
            m.move(*victim, "host")

    def released(self, m, index: int) -> None:
        return None

    def after_reduce(self, m, index: int) -> None:
        return None

    def step_side(self, m, index: int) -> str:
        if self.resident is None:
            self.resident = m.full_model_bytes() + m.stats.peak() <= self.room
        return "device" if self.resident else "host"

    def after_step(self, m, index: int) -> None:
        return None


def make_policy(offload, cap: float | None, cuda: bool = False):
    """The policy for ``PlanOptions.offload`` ("auto" or {"params": f, "optimizer": g})."""
    if offload == "auto":
        if cap is None:
            raise AutoparError("offload='auto' needs a device memory cap: pass memory_budget (bytes per device)")
        return AutoPlacement(cap, headroom=0.1 if cuda else 0.01)
    return StaticPlacement(float(offload.get("params", 0.0)), float(offload.get("optimizer", 0.0)))
