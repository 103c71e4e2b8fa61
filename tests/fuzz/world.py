"""Many graphs in few gloo worlds: one world per world size, each graph guarded and timed.

    outcomes = run_jobs(jobs, world_size=4, time_limit=10, graph_timeout=180)

``jobs``: ``(graph, budget)`` pairs whose meshes have ``world_size`` devices. Spawning a world costs
about 12 s, so one world runs them all (tests/distributed.py), each rank appending one JSON record
per graph to its own file. A graph that runs past ``graph_timeout`` is a hang: a watchdog ends the
rank. An error after planning also ends the rank (its collectives can no longer match the other
ranks'). When a world ends early, the graph it ended in takes its outcome from the records (an
error on some rank, else a hang), and a fresh world runs the graphs after it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time

from tests.fuzz.check import Outcome, _crash, run_graph

HANG_EXIT, ERROR_EXIT = 17, 18


def _secondary(exc: BaseException) -> bool:
    """An error caused by another rank leaving (a broken connection), not by this rank's graph."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or "Connection closed by peer" in text or "Gloo" in text


def _rank_main(rank: int, world_size: int, jobs, outdir: str, time_limit: float, graph_timeout: float) -> int:
    lock = threading.Lock()
    out = open(os.path.join(outdir, f"rank{rank}.jsonl"), "a")  # noqa: SIM115 - written until this process ends

    def write(record: dict) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    for index, graph, budget in jobs:
        write({"index": index, "start": True})

        def hang(index=index, seed=graph.seed):
            write({"index": index, **dataclasses.asdict(Outcome(seed, "hang", "run", f"ran past {graph_timeout:g} s"))})
            os._exit(HANG_EXIT)

        watchdog = threading.Timer(graph_timeout, hang)
        watchdog.daemon = True
        watchdog.start()
        fatal, t0 = None, time.perf_counter()
        try:
            outcome = run_graph(graph, budget, time_limit)
        except BaseException as exc:  # noqa: BLE001 - recorded, then this rank ends (see the docstring)
            outcome, fatal = _crash(graph.seed, "run", exc), exc
        watchdog.cancel()
        outcome = dataclasses.replace(outcome, seconds=round(time.perf_counter() - t0, 2))
        write({"index": index, **dataclasses.asdict(outcome), "secondary": fatal is not None and _secondary(fatal)})
        if fatal is not None:
            os._exit(ERROR_EXIT)
    out.close()
    return len(jobs)


def _read(outdir: str, world_size: int) -> tuple[dict, set]:
    """index -> [(rank, record)] of finished graphs; the set of started indices."""
    done: dict[int, list] = {}
    started: set[int] = set()
    for rank in range(world_size):
        path = os.path.join(outdir, f"rank{rank}.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the process ending
                    continue
                if record.pop("start", False):
                    started.add(record["index"])
                else:
                    done.setdefault(record["index"], []).append((rank, record))
    return done, started


def _merge(records: list, seed: int, world_note: str) -> Outcome:
    """One outcome from every rank's record of a graph: an error beats a hang beats a mismatch beats equal."""
    fields = ("seed", "status", "stage", "message", "clear", "seconds")

    def outcome(r):
        return Outcome(**{k: v for k, v in r.items() if k in fields})

    records = sorted(records, key=lambda rr: rr[0])
    for want in (lambda r: r["status"] == "crash" and not r.get("secondary"), lambda r: r["status"] == "hang",
                 lambda r: r["status"] == "mismatch", lambda r: r["status"] == "crash"):
        hit = next((r for _rank, r in records if want(r)), None)
        if hit is not None:
            return outcome(hit)
    if records:
        return outcome(records[0][1])
    return Outcome(seed, "crash", "run", f"the world ended without a record: {world_note}")


def run_jobs(jobs: list, world_size: int, time_limit: float, graph_timeout: float, say=lambda line: None) -> list:
    """The Outcome of each job, in order (see the module docstring)."""
    from tests.distributed import DistributedTestError, run_distributed

    pending = [(k, graph, budget) for k, (graph, budget) in enumerate(jobs)]
    outcomes: dict[int, Outcome] = {}
    failed_starts = 0
    while pending:
        note = ""
        with tempfile.TemporaryDirectory(prefix="autopar-fuzz-") as outdir:
            try:
                run_distributed(_rank_main, world_size, pending, outdir, time_limit, graph_timeout,
                                timeout=graph_timeout * len(pending) + 120)
            except DistributedTestError as err:
                note = str(err).strip().splitlines()[0]
            done, started = _read(outdir, world_size)
        rest = []
        for pos, (k, graph, _budget) in enumerate(pending):
            records = done.get(k, [])
            if len(records) == world_size and not any(r.get("secondary") for _rank, r in records):
                outcomes[k] = _merge(records, graph.seed, note)
                continue
            if k not in started and not records:
                rest = pending[pos:]  # the world never reached this graph
                break
            outcomes[k] = _merge(records, graph.seed, note)  # the graph this world ended in
            say(f"world of {world_size} ended in seed {graph.seed} ({outcomes[k].status}); a fresh world goes on")
            rest = pending[pos + 1:]
            break
        if rest and rest[0] == pending[0]:
            failed_starts += 1
            if failed_starts >= 2:
                for k, graph, _budget in rest:
                    outcomes[k] = Outcome(graph.seed, "crash", "world", f"no world of {world_size} started: {note}")
                rest = []
        pending = rest
    return [outcomes[k] for k in range(len(jobs))]
