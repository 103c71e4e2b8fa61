"""Silence output written to the C-level stdout (highspy prints a banner even with ``msg=False``)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys


def _flush_c() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbol lookup on this platform
        pass


@contextlib.contextmanager
def quiet_stdout():
    """Point file descriptor 1 at /dev/null for the duration (Python's sys.stdout is flushed first)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced stdout: nothing at fd level to hide
        fd = 1
    sys.stdout.flush()
    _flush_c()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        _flush_c()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
