"""The shared multi-process harness: a gloo world of N CPU processes on 127.0.0.1.

    results = run_distributed(check_all_pairs, 4, "cpu:2x2", timeout=120)

spawns ``world_size`` processes, initialises gloo in each, calls ``fn(rank, world_size, *args)``
and returns the per-rank return values (picklable) in rank order. If any rank raises, the parent
raises with that rank's traceback; the whole run is bounded by ``timeout`` seconds (spawn, init and
``fn``), after which the children are killed, so a broken collective fails instead of hanging.

Ranks are forked from a forkserver that imported torch, transformers, timm and autopar once, so a
world of 4 starts in about 0.2 s (spawned afresh, each rank imported them again: about 10 s on 2
cores); where there is no forkserver, they are spawned. ``fn`` must be a module-level function of an
importable module (tests are packages for this reason).
"""
from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp


class DistributedTestError(RuntimeError):
    """A rank failed, died, or the world ran past its timeout."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, timeout: float, fn: Callable, args: tuple, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # 2 cores shared by every rank
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))
        value = fn(rank, world_size, *args)
        # bytes, not tensors: torch's queue would pass tensors through shared memory of a dying process
        results.put((rank, True, pickle.dumps(value)))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - report everything to the parent, before tearing anything down
        results.put((rank, False, traceback.format_exc()))


def _failure(fn: Callable, world_size: int, rank: int, text: str, results) -> str:
    """The first failing rank's traceback, plus the last line of any other rank failing within a second
    (usually a collective broken by the first one exiting)."""
    others = []
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            other, ok, payload = results.get(timeout=0.1)
        except queue.Empty:
            continue
        if not ok:
            others.append(f"rank {other}: {payload.strip().splitlines()[-1]}")
    also = ("\nthen also failed: " + "; ".join(others)) if others else ""
    return f"rank {rank} of {world_size} failed in {fn.__name__}:\n{text}{also}"


# imported once by the forkserver, before it forks any rank (a module missing here is skipped by it)
PRELOAD = ["torch", "torch.distributed", "transformers", "timm", "autopar", "autopar.zoo", "tests.distributed"]


def _context():
    if "forkserver" in mp.get_all_start_methods():
        mp.set_forkserver_preload(PRELOAD)
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 120) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on a fresh gloo world; return the values in rank order."""
    ctx = _context()
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, timeout, fn, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    values: dict[int, Any] = {}
    try:
        while len(values) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(values))
                    raise DistributedTestError(f"{fn.__name__} on {world_size} ranks ran past {timeout} s; "
                                               f"ranks {missing} had not finished (a hung collective?)") from None
                dead = [r for r, p in enumerate(procs) if r not in values and p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(0.5)  # a failing rank reports before it exits; give its message time to arrive
                    if results.empty():
                        raise DistributedTestError(f"rank(s) {dead} died with exit code "
                                                   f"{[procs[r].exitcode for r in dead]} in {fn.__name__}") from None
                continue
            if not ok:
                raise DistributedTestError(_failure(fn, world_size, rank, payload, results))
            values[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=5 if len(values) == world_size else 0)
        for p in procs:  # kill only the children this call started
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
    return [values[r] for r in range(world_size)]
