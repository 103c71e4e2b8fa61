"""What the fuzzer checks of one graph: planning (no process group) and one training step on every rank.

``plan_checks`` (in the parent, before any process starts), for a budgeted graph: it plans without a
budget; a budget of 1 byte is refused with an ``InfeasibleBudgetError`` whose smallest budget
*does* fit (planned again at it), and the graph's budget (between that and the unconstrained peak)
plans, with a peak within it. ``run_graph`` (inside each rank): ``autoparallelize`` with the same
options accepts that budget, and one forward, backward and AdamW step give the single-device loss,
every gradient, every parameter and buffer (rtol 1e-4, atol 1e-5, as tests/test_autoparallelize.py).
A float32 graph's value outside those tolerances still matches when it is within 4x the single-device
float32 value's own distance from float64 (plus atol): a gradient that is 0 but for rounding (a bias a
LayerNorm over that dim removes: seed 1116) is noise the order of summation sets, on one device as here.

An ``Outcome`` says how a graph ended: ``equal``, ``mismatch``, ``crash`` (``clear``: an
``AutoparError`` the user could act on, not a broken promise about budgets) or ``hang``.
"""
from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass

import torch

from tests.fuzz.graphs import Graph, build

RTOL, ATOL = 1e-4, 1e-5
ROUNDING = 4  # a float32 value may be this many times as far from float64 as the single-device one is


@dataclass(frozen=True)
class Outcome:
    seed: int
    status: str  # "equal" | "mismatch" | "crash" | "hang"
    stage: str = ""  # where: "plan", "smallest budget", "budget", "autoparallelize", "run", "compare", ...
    message: str = ""
    clear: bool = False  # a crash that is a clear AutoparError
    seconds: float = 0.0  # how long its run took on rank 0 (0: not run)

    def line(self) -> str:
        what = self.status + (" (clear error)" if self.clear else "")
        first = self.message.strip().splitlines()[-1] if self.message.strip() else ""
        return f"seed {self.seed}: {what} in {self.stage}: {first}"


class BudgetBroken(Exception):
    """A promise about budgets is broken: a stated smallest budget does not fit, or an accepted one is refused."""


def _crash(seed: int, stage: str, exc: BaseException) -> Outcome:
    from autopar.errors import AutoparError

    clear = isinstance(exc, AutoparError) and not isinstance(exc, BudgetBroken)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Outcome(seed, "crash", stage, text, clear)


def options(graph: Graph, time_limit: float) -> dict:
    return dict(checkpoint=graph.checkpoint, time_limit=time_limit)


def plan_checks(graph: Graph, time_limit: float) -> tuple[float | None, Outcome | None]:
    """(the budget to run the graph at, None) or (None, the failure) -- see the module docstring."""
    import autopar
    from autopar.errors import InfeasibleBudgetError

    if graph.budget is None:  # nothing to check here: autoparallelize plans it
        return None, None
    model, inputs = build(graph)
    cluster = autopar.ClusterInfo.preset(graph.cluster)
    opts = options(graph, time_limit)
    stage = "plan"
    try:
        free = autopar.plan(model, cluster, inputs, **opts)
        stage = "smallest budget"
        try:
            autopar.plan(model, cluster, inputs, memory_budget=1.0, **opts)
            raise BudgetBroken("a budget of 1 byte per device was accepted")
        except InfeasibleBudgetError as err:
            smallest = err.min_budget
        _fits(lambda b: autopar.plan(model, cluster, inputs, memory_budget=b, **opts), smallest,
              "the smallest budget the error states")
        budget = smallest + graph.budget * max(0.0, free.peak_memory - smallest)
        stage = "budget"
        _fits(lambda b: autopar.plan(model, cluster, inputs, memory_budget=b, **opts), budget,
              f"a budget above the smallest that fits ({smallest:.0f})")
        return budget, None
    except Exception as exc:  # noqa: BLE001 - every failure is an outcome
        return None, _crash(graph.seed, stage, exc)


def _fits(plan_at, budget: float, what: str) -> None:
    """``plan_at(budget)`` returns a plan whose peak is within ``budget``, else BudgetBroken says ``what`` broke."""
    try:
        plan = plan_at(budget)
    except Exception as err:
        raise BudgetBroken(f"{what}, {budget:.0f} bytes, is refused: {type(err).__name__}: {err}") from err
    if plan.peak_memory > budget:
        raise BudgetBroken(f"{what}, {budget:.0f} bytes, gives a plan peaking at {plan.peak_memory:.0f}")


def _close(got: torch.Tensor, want: torch.Tensor, exact: torch.Tensor | None = None) -> str | None:
    """None if ``got`` matches the single-device ``want``, else why not. ``exact``: the same value computed in
    float64 (float32 graphs), for a value rounding alone sets apart (module docstring)."""
    try:
        torch.testing.assert_close(got.to(want.dtype), want, rtol=RTOL, atol=ATOL)
    except AssertionError as err:
        if exact is not None:
            ours, theirs = ((t.double() - exact).abs().max().item() for t in (got, want))
            if ours <= ROUNDING * theirs + ATOL:
                return None
            return f"{str(err).strip()} -- off {ours:.3g} from float64, one device off {theirs:.3g}".replace("\n", " ")
        return str(err).strip().replace("\n", " ")
    return None


def run_graph(graph: Graph, budget: float | None, time_limit: float) -> Outcome:
    """One step of ``graph`` on this rank against the single-device model. Every rank runs the same
    collectives in the same order whatever happens (a planning error is raised on every rank alike);
    an error after planning propagates (the caller ends this rank's world)."""
    import torch.distributed as dist

    import autopar
    from autopar.errors import InfeasibleBudgetError

    model, inputs = build(graph)
    ref = copy.deepcopy(model)
    cluster = autopar.ClusterInfo.preset(graph.cluster)
    failed = torch.zeros(1)
    outcome = None
    try:
        pm = autopar.autoparallelize(model, cluster, inputs, memory_budget=budget, **options(graph, time_limit))
    except Exception as exc:  # noqa: BLE001
        failed[0] = 1
        outcome = _crash(graph.seed, "autoparallelize", exc)
        if isinstance(exc, InfeasibleBudgetError):
            outcome = _crash(graph.seed, "autoparallelize",
                             BudgetBroken(f"autopar.plan accepts a budget of {budget:.0f} bytes, autoparallelize "
                                          f"refuses it: {exc}"))
    dist.all_reduce(failed)  # codegen may fail on one rank only: every rank skips the run together
    if outcome is not None or failed.item():
        return outcome or Outcome(graph.seed, "crash", "autoparallelize", "failed on another rank")
    # AdamW's first step moves p by lr * g / (|g| + eps): a gradient error d moves it by up to lr * d / eps.
    # eps = lr keeps that within d, so parameters are checked with the gradients' own tolerance; a small eps
    # turned rounding noise (1e-9) on gradients that are exactly 0 (a key bias before softmax) into a step.
    exact = copy.deepcopy(ref).double() if graph.dtype == "float32" else None
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, eps=1e-3)
    opt = torch.optim.AdamW(pm.parameters(), lr=1e-3, eps=1e-3)
    ref_loss, loss = ref(*inputs), pm(*inputs)
    ref_loss.backward()
    loss.backward()
    grads = pm.full_grads()
    ref_opt.step()
    opt.step()
    state = pm.full_state_dict()
    want64: dict[str, torch.Tensor | None] = {}
    if exact is not None:
        exact(*(x.double() if x.is_floating_point() else x for x in inputs)).backward()
        want64 = {f"grad {n}": p.grad for n, p in exact.named_parameters()}
        torch.optim.AdamW(exact.parameters(), lr=1e-3, eps=1e-3).step()
        want64.update({n: t.detach() for n, t in [*exact.named_parameters(), *exact.named_buffers()]})
    problems = []
    if (bad := _close(loss.detach(), ref_loss.detach())) is not None:
        problems.append(f"loss: {bad}")
    for name, p in ref.named_parameters():
        got = grads.get(name)
        if p.grad is None or got is None:
            if (p.grad is None) != (got is None):
                problems.append(f"grad {name}: {'none' if got is None else 'one'} where the reference has "
                                f"{'one' if got is None else 'none'}")
            continue
        if (bad := _close(got, p.grad, want64.get(f"grad {name}"))) is not None:
            problems.append(f"grad {name}: {bad}")
    for name, t in [*ref.named_parameters(), *ref.named_buffers()]:
        if name not in state:
            problems.append(f"{name} missing from full_state_dict()")
        elif (bad := _close(state[name], t.detach(), want64.get(name))) is not None:
            problems.append(f"{name} after one AdamW step: {bad}")
    if problems:
        return Outcome(graph.seed, "mismatch", "compare", "\n".join(problems))
    return Outcome(graph.seed, "equal")
