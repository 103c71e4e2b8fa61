"""plan_graph: a traced graph, a cluster and PlanOptions -> the Plan that will run.

Stage 1 (the sharding ILP, ``ilp.solve``) and stage 2 (activation checkpointing, ``checkpoint``)
on one account of memory (``timeline``): a plan fits when its Timeline's peak, with its
recomputation schedule, is within the budget. ``checkpoint``:

- ``"none"``: no recomputation: stage 1's plan at the budget when it fits; otherwise (stage 1 counts a
  saved activation once, where two savers may keep two resharded copies) the plan needing least memory.
- ``None`` (default): stage 1's plan at the budget when it fits; otherwise stage 2 on stage 1's
  candidates and the fastest that fits wins.
- ``"auto"``: stage 2's candidates are weighed even when stage 1's plan fits alone.
- module names: those modules recomputed, in stage 1's plan at the budget or else in the plan needing
  least memory.

Stage 2's candidates are the plan stage 1 fits to the budget, the fastest plan (no budget) and,
when neither fits with recomputation, the plan needing least memory (solved at stage 1's smallest
budget). The last two do not depend on the budget, so the smallest budget an error states (the
least peak any schedule of either reaches) fits when planned again: at that budget the same plan
and schedule are among the candidates. So for "none" and module names: the smallest budget stated is
the peak of the plan needing least memory (with those modules recomputed), a candidate at every budget.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time

import torch.fx as fx

from autopar.cluster import ClusterInfo
from autopar.errors import AutoparError, InfeasibleBudgetError
from autopar.options import PlanOptions
from autopar.solver.checkpoint import CheckpointPlan, chain_of, forward_time, module_regions, plan_checkpoints
from autopar.solver.checkpoint_dp import min_peak, no_checkpoint
from autopar.solver.checkpoint_saved import saved_storages
from autopar.solver.cost_model import Pricing
from autopar.solver.full_plan import Plan, graph_fingerprint, input_specs
from autopar.solver.ilp import solve  # imports pulp now: its import keeps a traceback, and so the frames above it
from autopar.solver.offload import AUTO_SHARES, HostShare, host_seconds, offload_plan, offloaded
from autopar.solver.plan import ShardingPlan, choice_of
from autopar.solver.quiet import gc_paused
from autopar.solver.timeline import Timeline, background, simulate

INF = float("inf")


@contextlib.contextmanager
def stage(say, name: str):
    """Say ``name ...`` when a stage starts and ``name: 1.23 s`` when it ends."""
    say(f"{name} ...")
    t0 = time.perf_counter()
    yield
    say(f"{name}: {time.perf_counter() - t0:.2f} s")


def _bytes(n: float) -> str:
    from autopar.report.text import human_bytes

    return "no budget" if n == INF else human_bytes(n)


class Planner:
    """One traced graph's strategies, memory model and ILP reductions, solved at as many budgets as asked."""

    def __init__(self, gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, say=lambda line: None,
                 strategy_graph=None):
        from autopar.solver.build import build_strategies
        from autopar.solver.memory import MemoryModel
        from autopar.solver.merge import reduce

        self.gm, self.cluster, self.options, self.say = gm, cluster, options, say
        self.sg = strategy_graph
        if self.sg is None:
            with stage(say, f"strategies for {len(gm.graph.nodes)} nodes"):
                self.sg = build_strategies(gm, cluster, pricing=Pricing.of(options), bar=getattr(say, "bar", None))
        self.mm = MemoryModel(self.sg, options.optimizer)
        if isinstance(options.offload, dict):  # a static split: priced as asked (solver/offload.py)
            self.mm = offloaded(self.mm, HostShare(float(options.offload.get("params", 0.0)),
                                                   float(options.offload.get("optimizer", 0.0))), cluster,
                                options.bucket_bytes)
        self.red = reduce(self.sg)
        self._solved: dict[float, ShardingPlan | InfeasibleBudgetError] = {}
        self._smallest: float | None = None
        self._accounts: dict[int, tuple] = {}

    def at_share(self, share: HostShare) -> Planner:
        """This planner's strategies and reductions with ``share`` of the state on the host (nothing solved yet)."""
        new = copy.copy(self)
        new.mm = offloaded(self.mm, share, self.cluster, self.options.bucket_bytes)
        new._solved, new._smallest, new._accounts = {}, None, {}
        return new

    def host_time(self, sharding: ShardingPlan) -> float:
        """Seconds per step the plan spends on the host link and the host optimizer step (0 without offload)."""
        return host_seconds(self.mm, self._account(sharding)[1]) if self.mm.share is not None else 0.0

    # ---- stage 1 --------------------------------------------------------------------------
    def solve(self, budget: float) -> ShardingPlan:
        """Stage 1 at ``budget`` bytes per device (INF: none); raises InfeasibleBudgetError."""
        if budget not in self._solved:
            try:
                with stage(self.say, f"ILP at {_bytes(budget)} per device (time limit {self.options.time_limit:g} s)"):
                    self._solved[budget] = solve(self.sg, self.cluster, memory_budget=budget,
                                                 time_limit=self.options.time_limit, optimizer=self.options.optimizer,
                                                 memory=self.mm, reduction=self.red)
            except InfeasibleBudgetError as err:
                self._solved[budget] = err
                self._smallest = err.min_budget
        result = self._solved[budget]
        if isinstance(result, InfeasibleBudgetError):
            raise result
        return result

    def try_solve(self, budget: float) -> ShardingPlan | None:
        try:
            return self.solve(budget)
        except InfeasibleBudgetError:
            return None

    def leanest(self) -> ShardingPlan:
        """The plan needing least memory by stage 1's account: solved at its smallest budget."""
        if self._smallest is None:
            self.try_solve(0.0)  # always infeasible: the error states stage 1's smallest budget
        return self.solve(self._smallest)

    # ---- one plan's memory ---------------------------------------------------------------------
    def _account(self, sharding: ShardingPlan):
        key = id(sharding)
        if key not in self._accounts:
            of = sharding.strategy_lookup()
            choice = choice_of(self.sg, sharding)
            self._accounts[key] = (sharding, of, choice, saved_storages(self.gm, self.cluster.mesh_shape, of))
        return self._accounts[key][1:]

    def timeline(self, sharding: ShardingPlan, regions=()) -> Timeline:
        of, choice, saves = self._account(sharding)
        return simulate(self.gm, self.mm, choice, of, saves, tuple(regions))

    def chain(self, sharding: ShardingPlan):
        of, choice, _saves = self._account(sharding)
        return chain_of(self.gm, self.cluster.mesh_shape, of, background(self.mm, choice))


@dataclasses.dataclass
class _Candidate:
    sharding: ShardingPlan
    checkpoint: CheckpointPlan | None
    timeline: Timeline
    label: str
    host: float = 0.0  # s per step of offload's transfers and host optimizer step

    @property
    def time(self) -> float:
        recompute = self.checkpoint.extra_time if self.checkpoint is not None else 0.0
        return self.sharding.step_time + recompute + self.host


@gc_paused
def plan_graph(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, say=lambda line: None) -> Plan:
    """The Plan for ``gm`` (a traced graph) on ``cluster`` under ``options`` (module docstring)."""
    return plan_of(Planner(gm, cluster, options, say))


def plan_of(planner: Planner) -> Plan:
    """``plan_graph`` on a Planner already made (whose solves so far it reuses)."""
    options = planner.options
    budget = options.budget(planner.cluster)
    if options.offload == "auto":
        return _auto_offload(planner, budget)
    mode = options.checkpoint
    if isinstance(options.offload, dict):
        _no_recompute_with_offload(options)
        mode = "none"
    chosen, notes = _choose(planner, budget, mode)
    return _plan(planner, chosen, notes)


def _no_recompute_with_offload(options: PlanOptions) -> None:
    if options.checkpoint not in (None, "none"):
        raise AutoparError(f"offload does not compose with activation checkpointing yet (checkpoint="
                           f"{options.checkpoint!r}): pass checkpoint='none' or offload='none'")


def _auto_offload(planner: Planner, budget: float) -> Plan:
    """offload="auto": the fastest of no offload (with the checkpointing asked for) and each share of
    ``AUTO_SHARES`` (without recomputation: Gemini does not compose with it yet) that fits ``budget``.

    A share costs more than a smaller one for every plan (offload.py), so once a share's fastest plan (no
    budget) is no faster than the best found, no larger share can be: the search stops there. When no share
    fits, the error states the smallest budget over all of them (the largest share's, as a rule)."""
    options = planner.options
    best: tuple | None = None
    smallest: list[float] = []
    weighed: list[tuple[str, float | None, str]] = []  # (share, step time, what came of it)
    for share in [None] + [HostShare(*s) for s in AUTO_SHARES]:
        here = planner if share is None else planner.at_share(share)
        label = "no offload" if share is None else share.label
        if best is not None:
            fastest = here.solve(INF)
            if fastest.step_time + here.host_time(fastest) >= best[1].time:
                weighed.append((label, None, "no faster than the best even without a budget: not planned further"))
                break  # and no larger share is faster either
        planner.say(f"offload: weighing {label}")
        try:
            chosen, notes = _choose(here, budget, options.checkpoint if share is None else "none")
        except InfeasibleBudgetError as err:
            smallest.append(err.min_budget)
            weighed.append((label, None, f"does not fit (needs {_bytes(err.min_budget)})"))
            continue
        weighed.append((label, chosen.time, "fits"))
        if best is None or chosen.time < best[1].time:
            best = (here, chosen, notes, len(weighed) - 1)
    if best is None:
        recompute = "" if options.checkpoint == "none" else "; without offload, with activation checkpointing"
        raise InfeasibleBudgetError(budget, min(smallest), detail=f"(counting offload: every share of the "
                                                                  f"parameters and optimizer state on the host "
                                                                  f"weighed{recompute})")
    here, chosen, notes, at = best
    weighed[at] = (weighed[at][0], weighed[at][1], "chosen")
    notes = list(notes) + ["offload (auto) weighed: " + "; ".join(
        f"{label}: {note}" + ("" if t is None else f", {t * 1e3:.3f} ms per step") for label, t, note in weighed)]
    return _plan(here, chosen, notes, weighed=tuple(weighed))


def fastest_if_it_fits(planner: Planner) -> tuple[Plan | None, ShardingPlan]:
    """(the Plan of the fastest sharding plan, no budget, when it fits the budget without recomputation, else None;
    that sharding plan). A plan that fits is as fast as any ``plan_of`` could choose (a budget only restricts,
    recomputation only adds time), so ``plan_of`` would choose one as fast (unless ``checkpoint`` names modules)."""
    fastest = planner.solve(INF)
    timeline = planner.timeline(fastest)
    if timeline.peak > planner.options.budget(planner.cluster):
        return None, fastest
    found = _Candidate(fastest, None, timeline, "the fastest plan", planner.host_time(fastest))
    return _plan(planner, found, []), fastest


def _plan(planner: Planner, chosen: _Candidate, notes: list[str], weighed=()) -> Plan:
    gm, options = planner.gm, planner.options
    offload = offload_plan(planner.mm, planner._account(chosen.sharding)[1], _policy(options), weighed)
    return Plan(chosen.sharding, chosen.checkpoint, options, planner.cluster, graph_fingerprint(gm), input_specs(gm),
                chosen.timeline, options.budget(planner.cluster), tuple(notes), offload=offload)


def _choose(planner: Planner, budget: float, mode) -> tuple[_Candidate, list[str]]:
    if isinstance(mode, tuple):
        return _user_regions(planner, budget, mode), [f"checkpoint: the {len(mode)} module(s) asked for"]
    fitted = planner.try_solve(budget)
    notes: list[str] = []
    found: list[_Candidate] = []
    if fitted is not None:
        timeline = planner.timeline(fitted)
        if timeline.peak <= budget:
            found.append(_Candidate(fitted, None, timeline, "the plan fitted to the budget", planner.host_time(fitted)))
            if mode != "auto":
                return found[0], notes
    if mode == "none":
        return _leanest_alone(planner, budget), ["the plan fitted to the budget does not fit once every saved copy "
                                                 "is counted: the plan needing least memory"]
    smallest: dict[str, float] = {}
    if fitted is not None and not found:
        _with_checkpoints(planner, fitted, budget, "the plan fitted to the budget", found, smallest)
    fastest = planner.solve(INF)
    if fitted is None or fastest.step_time < fitted.step_time or not found:
        _with_checkpoints(planner, fastest, budget, "the fastest plan", found, smallest, try_plain=True)
    if not found:
        _with_checkpoints(planner, planner.leanest(), budget, "the plan needing least memory", found, smallest)
    if not found:
        least = min(v for k, v in smallest.items() if k != "the plan fitted to the budget")
        raise InfeasibleBudgetError(budget, math.ceil(least), detail="(with activation checkpointing)")
    for c in found:
        notes.append(f"{c.label}: {c.time * 1e3:.3f} ms per step, {len(c.checkpoint.regions) if c.checkpoint else 0} "
                     f"recomputed region(s), peak {_bytes(c.timeline.peak)}")
    best = min(found, key=lambda c: (c.time, c.timeline.peak))
    notes.append(f"chosen: {best.label}")
    return best, notes


def _with_checkpoints(planner: Planner, sharding: ShardingPlan, budget: float, label: str, found: list,
                      smallest: dict, try_plain: bool = False) -> None:
    """Add ``sharding`` to ``found`` as it is (``try_plain``) or with the least recomputation that fits;
    record in ``smallest`` the least peak any schedule of it reaches."""
    if try_plain:
        timeline = planner.timeline(sharding)
        if timeline.peak <= budget:
            found.append(_Candidate(sharding, None, timeline, label, planner.host_time(sharding)))
            smallest[label] = timeline.peak
            return
    with stage(planner.say, f"stage 2 (checkpointing) on {label}"):
        stages, chain = planner.chain(sharding)
        try:
            ckpt = plan_checkpoints(stages, chain, budget)
        except InfeasibleBudgetError:
            smallest[label] = min_peak(chain)
            return
    timeline = planner.timeline(sharding, ckpt.regions)
    if timeline.peak > budget:  # the chain is conservative; this would be a bug in one of the two accounts
        raise AutoparError(f"internal: stage 2's schedule for {label} peaks at {_bytes(ckpt.peak_after)} by its chain "
                           f"but {_bytes(timeline.peak)} on the timeline; please report this model")
    ckpt = dataclasses.replace(ckpt, kept=timeline.kept(), peak_before=no_checkpoint(chain).peak)
    found.append(_Candidate(sharding, ckpt if ckpt.regions else None, timeline, label, planner.host_time(sharding)))


def _leanest_alone(planner: Planner, budget: float) -> _Candidate:
    """checkpoint="none" when stage 1 found no plan, or its plan holds more once every saved copy is counted
    (two savers of one activation keeping two resharded copies): the plan needing least memory, if it fits.
    Else the error states that plan's peak, which fits when planned again: it is a candidate at every budget."""
    lean = planner.leanest()
    timeline = planner.timeline(lean)
    if timeline.peak > budget:
        raise InfeasibleBudgetError(budget, math.ceil(timeline.peak),
                                    detail="(without activation checkpointing, every saved copy counted)")
    return _Candidate(lean, None, timeline, "the plan needing least memory", planner.host_time(lean))


def _user_regions(planner: Planner, budget: float, modules: tuple[str, ...]) -> _Candidate:
    """The plan fitted to the budget with ``modules`` recomputed or, when that does not fit, the plan needing
    least memory with them; else the error states the latter's peak (a candidate at every budget, so it fits)."""
    regions = module_regions(planner.gm, modules)
    fitted = planner.try_solve(budget)
    for sharding in ([fitted] if fitted is not None else []) + [planner.leanest()]:
        before, timeline = planner.timeline(sharding), planner.timeline(sharding, regions)
        if timeline.peak <= budget:
            break
    else:
        raise InfeasibleBudgetError(budget, math.ceil(timeline.peak),
                                    detail=f"(with the modules {', '.join(modules)} recomputed)")
    of = sharding.strategy_lookup()
    by_name = {n.name: n for n in planner.gm.graph.nodes}
    extra = sum(forward_time([by_name[n] for n in region], of) for region in regions)
    ckpt = CheckpointPlan(regions, len(regions), extra, before.kept() - timeline.kept(), before.peak, timeline.peak,
                          budget, timeline.kept())
    return _Candidate(sharding, ckpt, timeline, "the modules asked for")


def hand_plan(gm: fx.GraphModule, cluster: ClusterInfo, options: PlanOptions, allowed) -> Plan:
    """The Plan whose sharding uses only strategies with ``allowed(node, strategy)`` (no checkpointing, no
    budget): a hand plan (data parallel, ZeRO-3, ...) in the same terms, for benchmarks and tests. With
    ``offload`` a share as given, or for "auto" everything on the host (priced; the auto policy runs it)."""
    planner = Planner(gm, cluster, options)
    if options.offload == "auto":  # priced with everything on the host; Gemini's auto policy runs it
        planner = planner.at_share(HostShare(*AUTO_SHARES[-1]))
    sharding = solve(planner.sg, cluster, memory_budget=INF, time_limit=options.time_limit, restrict=allowed,
                     optimizer=options.optimizer, memory=planner.mm, reduction=planner.red)
    return Plan(sharding, None, options, cluster, graph_fingerprint(gm), input_specs(gm), planner.timeline(sharding),
                options.budget(cluster), ("a hand plan: stage 1 restricted",),
                offload=offload_plan(planner.mm, planner._account(sharding)[1], _policy(options)))


def _policy(options: PlanOptions) -> str:
    """The Gemini policy that runs an offloading plan: the static split asked for, or the auto policy."""
    return "static" if isinstance(options.offload, dict) else "auto"
