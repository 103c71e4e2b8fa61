"""Offload in the plan: what keeping a share of the parameters and optimizer state on the host saves and costs.

Gemini (runtime/gemini) keeps every trainable parameter, its gradient and its AdamW state in chunks of
``bucket_bytes`` that move between device and host. The planner prices a *share*
(``HostShare(params=fp, optimizer=fo)``): the fraction fp of the parameter bytes and fo of the optimizer
state that live on the host, as Gemini's static policy places them (in execution order). For every plan x
(the ILP's strategies) with P(x), G(x), O(x) a parameter's, its gradient's and its optimizer state's local
bytes and E(x) its elements, summed over the trainable parameters:

    device memory   params      (1 - fp) P(x) + W_p         W_p: the chunks an op fetches (fp > 0)
                    optimizer   (1 - fo) O(x)
                    gradients   (1 - fo) G_t(x) + W_g        in backward; W_g: the chunks being filled (fo > 0)
    host link       h2d         sum_p m_p P_p(x)            m_p = (u_p + 1) fp + |fp - fo|
                    d2h         sum_p m_p P_p(x) + fo G(x)
    time            (h2d + d2h) / host_bandwidth + fo E(x) host_adam_time   (no overlap with compute counted)

as Gemini's static policy moves them: a parameter on the host is fetched by each of its u_p readers in
forward and once more in backward, and copied back each time it leaves; a chunk whose parameters and
optimizer state live on different sides crosses once more each way for its step (|fp - fo| of them, the
policy taking both fractions from the start of execution order); the gradients of host-stepped chunks go down.
W_p is the largest set of chunks one op pins (each parameter it reads in one chunk of at least
``bucket_bytes``; backward pins two), W_g two chunks: constants of the plan, so every term above is linear
in the ILP's one-hot variables and the same MemoryModel rows and Timeline carry them (memory.py). Every
share's cost grows along ``AUTO_SHARES`` for every plan, so a share's fastest plan is never beaten by a
later share's (the planner's offload="auto" search stops on it). At run time ``{"params": f, "optimizer": g}``
runs that static split (rounding each fraction up to whole chunks); ``offload="auto"`` runs Gemini's auto
policy under the budget (Belady eviction on the warm-up's schedule), which moves what its cap needs: the
plan prices the share it chose, an estimate of the auto policy's traffic, not its measure.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# the shares offload="auto" weighs, in order of growing cost: optimizer state first (ZeRO-Offload: it is read
# once a step), then parameters
AUTO_SHARES = ((0.0, 0.5), (0.0, 1.0), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (1.0, 1.0))


@dataclass(frozen=True, slots=True)
class HostShare:
    """Fractions of the trainable parameters' bytes (``params``) and of their optimizer state (``optimizer``)
    kept on the host."""

    params: float
    optimizer: float

    @property
    def label(self) -> str:
        return f"parameters {self.params:.0%}, optimizer state {self.optimizer:.0%} on the host"


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """The offload a Plan prices: its share, what crosses the host link per step and what that costs."""

    params: float  # fraction of parameter bytes on the host
    optimizer: float  # fraction of optimizer state on the host
    h2d: float  # bytes per step, host -> device
    d2h: float  # bytes per step, device -> host
    transfer_time: float  # s per step on the host link
    host_step_time: float  # s per step of the host's optimizer step
    working_params: float  # bytes: the chunks one op fetches (W_p)
    working_grads: float  # bytes: the gradient chunks being filled in backward (W_g)
    # where the state lives between steps, bytes per device: {"params"|"grads"|"optimizer": (device, host)}
    placement: dict = field(default_factory=dict)
    policy: str = "auto"  # what runs: "auto" (Gemini's auto policy under the budget) or "static" (this split)
    # offload="auto": every share weighed, as (its label, its plan's step time or None, what came of it)
    weighed: tuple[tuple[str, float | None, str], ...] = field(default=())

    @property
    def time(self) -> float:
        return self.transfer_time + self.host_step_time

    @property
    def runtime_option(self):
        """The ``offload`` Gemini runs: "auto", or the static split as {"params": f, "optimizer": g}."""
        return "auto" if self.policy == "auto" else {"params": self.params, "optimizer": self.optimizer}

    def describe(self) -> str:
        from autopar.report.text import human_bytes, human_time

        return (f"offload: parameters {self.params:.0%}, optimizer state {self.optimizer:.0%} on the host "
                f"({self.policy} policy); per step {human_bytes(self.h2d)} host->device, {human_bytes(self.d2h)} "
                f"device->host: {human_time(self.transfer_time)} on the host link, {human_time(self.host_step_time)} "
                f"of host optimizer step")

    def to_json(self) -> dict:
        data = asdict(self)
        data["weighed"] = [list(w) for w in self.weighed]
        data["placement"] = {k: list(v) for k, v in self.placement.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> OffloadPlan:
        return cls(**{**data, "weighed": tuple(tuple(w) for w in data.get("weighed", ())),
                      "placement": {k: tuple(v) for k, v in data.get("placement", {}).items()}})


def _trainable(mm) -> list[int]:
    return [k for k, g in enumerate(mm.full_grad) if g.any()]


def working_sets(mm, bucket_bytes: int) -> tuple[float, float]:
    """(W_p, W_g) of the module docstring, in bytes (each at most all the parameters' / gradients' bytes)."""
    trainable = _trainable(mm)
    if not trainable:
        return 0.0, 0.0
    largest = {k: float(mm.full_param[k].max()) for k in trainable}
    chunk = max(float(bucket_bytes), max(largest.values()))  # a parameter larger than a chunk is a chunk
    index = {v: k for k, v in enumerate(mm.sg.nodes)}
    per_op = 0.0
    for v in mm.sg.nodes:
        ks = {index[a] for a in v.all_input_nodes if a in index and index[a] in largest}
        per_op = max(per_op, sum(min(chunk, max(float(bucket_bytes), largest[k])) for k in ks))
    total_p = sum(largest.values())
    total_g = sum(float(mm.full_grad[k].max()) for k in trainable)
    return min(max(per_op, 2 * chunk), total_p), min(2 * chunk, total_g)


def offloaded(mm, share: HostShare, cluster, bucket_bytes: int):
    """``mm`` (a MemoryModel) with ``share`` on the host: the device's terms scaled, the working sets added and
    the host link's time per strategy (``host_time``) for the ILP's objective (module docstring)."""
    fp, fo = float(share.params), float(share.optimizer)
    w_p, w_g = working_sets(mm, bucket_bytes)
    trainable = set(_trainable(mm))
    host_time, moved = [], {}
    param, grad, opt = list(mm.param), list(mm.grad), list(mm.opt)
    for k in trainable:
        moved[k] = (len(mm.sg.nodes[k].users) + 1) * fp + abs(fp - fo)  # m_p: times it crosses, each way
        wire = 2 * moved[k] * mm.full_param[k] + fo * mm.full_grad[k]
        seconds = wire / cluster.host_bandwidth + fo * mm.elems[k] * cluster.host_adam_time
        if seconds.any():
            host_time.append((k, seconds))
        param[k] = (1 - fp) * mm.full_param[k]
        grad[k] = (1 - fo) * mm.full_grad[k]
        opt[k] = (1 - fo) * mm.full_opt[k]
    return mm.with_terms(param=param, grad=grad, opt=opt, resident_extra=w_p if fp > 0 else 0.0,
                         backward_extra=w_g if fo > 0 else 0.0, host_time=host_time, share=share,
                         host=(fp, fo, moved))


def offload_plan(mm, choice, policy: str, weighed=()) -> OffloadPlan | None:
    """The OffloadPlan of the plan ``choice`` under ``mm`` (a MemoryModel from ``offloaded``; None without)."""
    if mm.share is None:
        return None
    fp, fo, moved = mm.host
    trainable = _trainable(mm)

    def total(vectors) -> float:
        return sum(float(vectors[k][choice[k]]) for k in trainable)

    params = sum(moved[k] * float(mm.full_param[k][choice[k]]) for k in trainable)
    grads, elems = total(mm.full_grad), total(mm.elems)
    cluster = mm.sg.cluster
    h2d, d2h = params, params + fo * grads
    placement = {kind: ((1 - share) * whole, share * whole) for kind, share, whole in
                 (("params", fp, total(mm.full_param)), ("grads", fo, grads), ("optimizer", fo, total(mm.full_opt)))}
    return OffloadPlan(fp, fo, h2d, d2h, (h2d + d2h) / cluster.host_bandwidth, fo * elems * cluster.host_adam_time,
                       mm.resident_extra, mm.backward_extra, placement, policy, tuple(weighed))


def host_seconds(mm, choice) -> float:
    """The host link's and host optimizer's seconds per step of the plan ``choice`` (0 without offload)."""
    return float(sum(vec[choice[k]] for k, vec in mm.host_time))


__all__ = ["AUTO_SHARES", "HostShare", "OffloadPlan", "host_seconds", "offload_plan", "offloaded", "working_sets"]
