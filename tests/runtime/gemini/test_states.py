"""The chunk state machine (runtime/gemini/states.py): the legal moves, and illegal ones raise."""
from __future__ import annotations

import pytest

from autopar.runtime.gemini.states import LEGAL, ChunkState, ChunkStateError, StateMachine, is_legal

HOLD, COMPUTE, AFTER = ChunkState.HOLD, ChunkState.COMPUTE, ChunkState.HOLD_AFTER_BWD


def test_an_iteration_of_legal_moves_is_recorded():
    m = StateMachine(3)
    for state in (COMPUTE, HOLD, COMPUTE, COMPUTE, HOLD, COMPUTE, AFTER, HOLD):
        m.to(state)
    assert m.history == [HOLD, COMPUTE, HOLD, COMPUTE, HOLD, COMPUTE, AFTER, HOLD]  # COMPUTE twice: one state
    assert is_legal(m.history)


@pytest.mark.parametrize("start, bad", [(AFTER, COMPUTE)])
def test_illegal_moves_raise_and_say_what_to_do(start, bad):
    m = StateMachine(0)
    m.to(COMPUTE)
    m.to(start)
    with pytest.raises(ChunkStateError, match="chunk 0 cannot go from HOLD_AFTER_BWD to COMPUTE.*optimizer.step"):
        m.to(bad)
    assert m.state is start  # unchanged


def test_every_pair_outside_the_table_raises():
    for a in ChunkState:
        for b in ChunkState:
            if a is b:
                continue
            m = StateMachine(1)
            m.state = a
            if b in LEGAL[a]:
                m.to(b)
            else:
                with pytest.raises(ChunkStateError):
                    m.to(b)


def test_is_legal_rejects_bad_sequences():
    assert not is_legal([])
    assert not is_legal([COMPUTE, HOLD])  # must start in HOLD
    assert not is_legal([HOLD, AFTER, COMPUTE])
    assert is_legal([HOLD, AFTER, HOLD, COMPUTE, AFTER])
