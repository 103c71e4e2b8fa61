"""PlanOptions: every choice a user makes about a plan, one frozen record behind ``plan`` and ``autoparallelize``.

    autopar.plan(model, cluster, inputs, memory_budget=40 * 2**30, checkpoint="auto")
    autopar.autoparallelize(model, cluster, inputs, memory_budget=40 * 2**30, checkpoint="auto")

take the same keyword options and build the same ``PlanOptions``; the ``Plan`` records it, so a
saved plan says how it was made. Options are validated here, once, with errors that say what to do.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from autopar.errors import AutoparError

OPTIMIZERS = ("adamw", "adam", "sgd_momentum", "sgd")
CHECKPOINT_MODES = (None, "none", "auto")


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """How to plan.

    - ``memory_budget``: bytes per device the plan must fit (None: the cluster's device memory).
    - ``optimizer``: the optimizer whose state the memory model counts (adamw, adam, sgd_momentum, sgd).
    - ``checkpoint``: activation checkpointing. None (default): only when no sharding plan fits the
      budget by itself; "none": never; "auto": also when the fastest plan plus recomputation beats
      the fitted one; a tuple of module names: exactly those modules, each one region.
    - ``time_limit``: seconds for each ILP solve.
    - ``kernels``: swap in autopar's Triton kernels at run time (None: on CUDA only).
    - ``init``: where each rank's local shards come from (``autoparallelize`` only; the plan does not
      depend on it). None (default): the model's real weights, and for tensors on ``meta`` the model's
      own initialisers, seeded by ``seed`` and the tensor's name (the same on any mesh); a function
      ``init(name, local_tensor, global_shape, local_slices)`` that fills ``local_tensor`` in place
      (returning False leaves that tensor to the default); a path: a safetensors checkpoint (one
      file, or a directory with ``model.safetensors`` or ``model.safetensors.index.json``).
      A function is recorded in JSON as ``"function <name>"``.
    - ``seed``: the seed of the default initialisation (an integer >= 0).
    """

    memory_budget: float | None = None
    optimizer: str = "adamw"
    checkpoint: str | tuple[str, ...] | None = None
    time_limit: float = 60.0
    kernels: bool | None = None
    init: object = None  # None, a callable, or a checkpoint path (str)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, list):
            object.__setattr__(self, "checkpoint", tuple(self.checkpoint))
        if isinstance(self.init, os.PathLike):
            object.__setattr__(self, "init", os.fspath(self.init))
        budget = self.memory_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not budget > 0 or math.isnan(budget)):
            raise AutoparError(f"memory_budget must be a positive number of bytes per device (or None for the "
                               f"device's memory), got {budget!r}")
        if self.optimizer not in OPTIMIZERS:
            raise AutoparError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        ckpt = self.checkpoint
        modules = isinstance(ckpt, tuple) and ckpt and all(isinstance(n, str) for n in ckpt)
        if not (ckpt in CHECKPOINT_MODES or modules):
            raise AutoparError(f"checkpoint must be None, 'none', 'auto' or a list of module names, got {ckpt!r}")
        if not (isinstance(self.time_limit, (int, float)) and self.time_limit > 0):
            raise AutoparError(f"time_limit must be a positive number of seconds, got {self.time_limit!r}")
        if self.kernels not in (None, True, False):
            raise AutoparError(f"kernels must be None (on CUDA only), True or False, got {self.kernels!r}")
        if not (self.init is None or callable(self.init) or (isinstance(self.init, str) and self.init)):
            raise AutoparError(f"init must be None (the model's weights and initialisers), a function "
                               f"init(name, local_tensor, global_shape, local_slices) or the path of a safetensors "
                               f"checkpoint, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise AutoparError(f"seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def of(cls, options: PlanOptions | None = None, **kwargs) -> PlanOptions:
        """``options`` with ``kwargs`` applied (unknown names raise, naming the known ones)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown planning option(s) {', '.join(unknown)}; "
                            f"the options are {', '.join(sorted(known))}")
        base = _shallow(options) if options is not None else {}
        return cls(**{**base, **kwargs})

    def budget(self, cluster) -> float:
        """Bytes per device the plan must fit."""
        return float(cluster.memory_per_device if self.memory_budget is None else self.memory_budget)

    def portable(self) -> PlanOptions:
        """These options with a function ``init`` replaced by its description (so a Plan pickles and is
        broadcast to every rank; the plan does not depend on ``init``)."""
        return replace(self, init=describe_init(self.init)) if callable(self.init) else self

    def differences(self, other: PlanOptions) -> list[str]:
        """``name: this -> other`` for every option that differs."""
        return [f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}" for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]

    def to_json(self) -> dict:
        data = _shallow(self)
        if isinstance(self.checkpoint, tuple):
            data["checkpoint"] = list(self.checkpoint)
        if self.memory_budget == math.inf:
            data["memory_budget"] = "inf"  # no budget (JSON has no infinity)
        data["init"] = describe_init(self.init)
        return data

    @classmethod
    def from_json(cls, data: dict) -> PlanOptions:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("memory_budget") == "inf":
            data["memory_budget"] = math.inf
        return cls(**data)


def describe_init(init) -> str | None:
    """``init`` as JSON: None, the checkpoint path, or ``"function <name>"`` for a function."""
    if callable(init):
        return f"function {getattr(init, '__name__', None) or type(init).__name__}"
    return init


def _shallow(options: PlanOptions) -> dict:
    """Field name -> value, not copied (``dataclasses.asdict`` would deep-copy a function ``init``)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}
