"""The fuzzer end to end: draw graphs, check their planning here, run them in one world per world size.

    graphs, outcomes = fuzz(range(100, 160))
    print(summary(outcomes))     # fuzz: 60 graphs, 60 equal, 0 mismatches, 0 crashes (0 clear errors), 0 hangs
    print(failures(graphs, outcomes))
"""
from __future__ import annotations

import math
import threading
import time

from tests.fuzz.check import Outcome, plan_checks
from tests.fuzz.graphs import describe, random_graph
from tests.fuzz.world import run_jobs


def fuzz(seeds, time_limit: float = 10.0, graph_timeout: float = 240.0, say=lambda line: None):
    """(graphs, outcomes) of ``seeds``, in order.

    Graphs are grouped by world size; while one group's world runs (mostly waiting on rank 0's planning),
    the next group's planning checks run here, so the two cores of a small machine both work."""
    graphs = [random_graph(s) for s in seeds]
    outcomes: dict[int, object] = {}
    groups: dict[int, list[int]] = {}
    for k, graph in enumerate(graphs):
        groups.setdefault(math.prod(graph.mesh), []).append(k)
    running: threading.Thread | None = None
    for world_size, members in sorted(groups.items()):
        t0, jobs = time.perf_counter(), []
        for k in members:
            budget, failure = (None, None) if graphs[k].budget is None else plan_checks(graphs[k], time_limit)
            if failure is not None:
                outcomes[k] = failure
                say(failure.line())
            else:
                jobs.append((k, budget))
        say(f"planned {len(members)} graphs for {world_size} ranks in {time.perf_counter() - t0:.0f} s")
        if running is not None:
            running.join()
        running = threading.Thread(target=_run_world, args=(graphs, jobs, world_size, time_limit, graph_timeout,
                                                            outcomes, say))
        running.start()
    if running is not None:
        running.join()
    return graphs, [outcomes[k] for k in range(len(graphs))]


def _run_world(graphs, jobs, world_size, time_limit, graph_timeout, outcomes, say) -> None:
    t0 = time.perf_counter()
    try:
        ran = run_jobs([(graphs[k], budget) for k, budget in jobs], world_size, time_limit, graph_timeout, say)
    except Exception as exc:  # noqa: BLE001 - the harness itself failed: every graph of the world says so
        ran = [Outcome(graphs[k].seed, "crash", "world", f"{type(exc).__name__}: {exc}") for k, _b in jobs]
    for (k, _budget), outcome in zip(jobs, ran):
        outcomes[k] = outcome
        if outcome.status != "equal":
            say(outcome.line())
    say(f"ran {len(jobs)} graphs on {world_size} ranks in {time.perf_counter() - t0:.0f} s")


def summary(outcomes) -> str:
    count = {s: sum(o.status == s for o in outcomes) for s in ("equal", "mismatch", "crash", "hang")}
    clear = sum(o.status == "crash" and o.clear for o in outcomes)
    return (f"fuzz: {len(outcomes)} graphs, {count['equal']} equal, {count['mismatch']} mismatches, "
            f"{count['crash']} crashes ({clear} clear errors), {count['hang']} hangs")


def failures(graphs, outcomes, clear: bool = True) -> str:
    """Each graph that did not end equal: its seed, what happened, and the module (``clear``: with clear errors)."""
    parts = []
    for graph, outcome in zip(graphs, outcomes):
        if outcome.status == "equal" or (outcome.clear and not clear):
            continue
        parts.append(f"{outcome.line()}\n{describe(graph)}\n{outcome.message.rstrip()}\n"
                     f"(reproduce: python bench/fuzz.py --seed {graph.seed} --count 1)")
    return "\n\n".join(parts)
