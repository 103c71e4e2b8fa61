"""The state of a chunk over one iteration, with the legal transitions enforced.

    HOLD ──use──▶ COMPUTE ──release──▶ HOLD                 (forward; backward before its gradients are done)
    HOLD / COMPUTE ──gradients reduced──▶ HOLD_AFTER_BWD    (COMPUTE: when it is released)
    HOLD_AFTER_BWD ──optimizer step or zero_grad──▶ HOLD

A chunk in COMPUTE is pinned on the device (an op is reading its parameters); HOLD and HOLD_AFTER_BWD
may live on either side. Placement (device or host) is separate from the state: the policy moves a
chunk's parameters, gradients and optimizer state independently (manager.py).
"""
from __future__ import annotations

import enum

from autopar.errors import AutoparError


class ChunkState(enum.Enum):
    HOLD = "HOLD"  # parameters valid, no op reading them
    COMPUTE = "COMPUTE"  # pinned on the device for the op that runs now
    HOLD_AFTER_BWD = "HOLD_AFTER_BWD"  # gradients complete and reduced, waiting for the optimizer

    def __str__(self) -> str:
        return self.value


LEGAL: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.HOLD: frozenset({ChunkState.COMPUTE, ChunkState.HOLD_AFTER_BWD}),
    ChunkState.COMPUTE: frozenset({ChunkState.HOLD, ChunkState.HOLD_AFTER_BWD}),
    ChunkState.HOLD_AFTER_BWD: frozenset({ChunkState.HOLD}),
}

_WHY = {
    (ChunkState.HOLD_AFTER_BWD, ChunkState.COMPUTE):
        "its gradients are waiting for the optimizer: call optimizer.step() (or optimizer.zero_grad()) "
        "after backward, before the next forward",
}


class ChunkStateError(AutoparError):
    """A chunk was asked to make a transition the state machine forbids."""


class StateMachine:
    """One chunk's state and the sequence of states it went through (``history``, for tests and reports)."""

    __slots__ = ("index", "state", "history")

    def __init__(self, index: int) -> None:
        self.index, self.state = index, ChunkState.HOLD
        self.history: list[ChunkState] = [ChunkState.HOLD]

    def to(self, new: ChunkState) -> None:
        """Move to ``new`` (staying in the same state is no transition); an illegal move raises."""
        if new is self.state:
            return
        if new not in LEGAL[self.state]:
            why = _WHY.get((self.state, new), f"the legal moves from {self.state} are "
                                               f"{', '.join(sorted(map(str, LEGAL[self.state])))}")
            raise ChunkStateError(f"chunk {self.index} cannot go from {self.state} to {new}: {why}")
        self.state = new
        self.history.append(new)


def is_legal(sequence: list[ChunkState]) -> bool:
    """Whether a recorded state sequence starts in HOLD and only makes legal moves."""
    return bool(sequence) and sequence[0] is ChunkState.HOLD and all(
        b in LEGAL[a] for a, b in zip(sequence, sequence[1:]))
