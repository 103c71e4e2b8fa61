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
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


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
    - ``outputs``: what the module returns: "all" (every output, gathered whole), "loss" (only the
      loss: nothing else is gathered, or computed if nothing needs it), a tuple of a ModelOutput's
      field names, or "local" (every output as this rank's shard, a ``ShardedOutput``).
    - ``mixed_precision``: "bf16" or "fp16": compute in that dtype while parameters stay in their own
      (the fp32 master copy the optimizer steps), as FSDP2's ``MixedPrecisionPolicy(param_dtype=...)``:
      every trainable float parameter and float input is read through a cast, traced, so the plan
      prices the dtypes that run; fp16 wants ``torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler``.
    - ``reduce_dtype``: the dtype gradients are summed across ranks in ("fp32", the default, or "bf16", "fp16").
    - ``seed`` (an integer >= 0): what every random op's seed derives from (runtime/rng.py: replicas
      draw the same dropout mask, shards independent ones, two runs with one seed are identical), and
      the seed of the default initialisation of tensors on ``meta`` (the same values on any mesh).
    - ``bucket_bytes``: size of the chunks replicated parameters' gradients are reduced in (as DDP's
      ``bucket_cap_mb``); the cost model prices one collective per chunk.
    - ``mesh``: the logical device mesh. None (default): the cluster's own ``mesh_shape``; a shape such as
      ``(16, 4)``: the cluster's devices arranged so (``ClusterInfo.with_mesh``: with a ``topology``, each
      axis priced by the link its groups cross); ``"search"``: every mesh of 1 to 3 axes that respects the
      cluster's nodes is planned (``solver/mesh_search.py``) and the fastest that fits is returned, the
      others' predicted step times in its report (the cluster must know its ``topology``: every preset does).
    - ``workers``: processes that plan a ``mesh="search"``'s meshes at once (default 1: one after the other;
      "auto": one per CPU core, at most one per mesh). The meshes are independent; the cluster's own is
      planned first, and the others in forked processes, each bounded by the best plan finished so far
      (so which slower meshes are bounded out may vary). The plan chosen is the same for any number
      (ties broken in the candidates' order); the plan does not depend on it. Needs the ``fork`` start
      method (Linux); elsewhere the meshes are planned one after the other.
    - ``offload``: Gemini (runtime/gemini): parameters, gradients and optimizer state in chunks that move
      between device and host. "none" (default): everything stays on the device; "auto": the planner
      weighs no offload and growing shares of the optimizer state and parameters on the host
      (solver/offload.py: what each saves on the device and costs on the host link) and keeps the fastest
      plan that fits the budget; when it offloads, Gemini's auto policy runs it: before each op, make room
      for its non-model peak (measured in a warm-up iteration) plus the chunks it needs within the budget,
      evicting the chunk used furthest in the future. ``{"params": f, "optimizer": g}``: fractions (0 to
      1) of the parameter chunks and of the optimizer state kept on the host, planned and run as given.
      Step with ``autopar.optimizer(module, torch.optim.AdamW, ...)``. Offload does not compose with
      activation checkpointing yet: a share on the host is planned without recomputation.
    - ``init``: where each rank's local shards come from (``autoparallelize`` only; the plan does not
      depend on it). None (default): the model's real weights, and for tensors on ``meta`` the model's
      own initialisers, seeded by ``seed`` and the tensor's name (the same on any mesh); a function
      ``init(name, local_tensor, global_shape, local_slices)`` that fills ``local_tensor`` in place
      (returning False leaves that tensor to the default); a path: a safetensors checkpoint (one
      file, or a directory with ``model.safetensors`` or ``model.safetensors.index.json``).
      A function is recorded in JSON as ``"function <name>"``.
    """

    memory_budget: float | None = None
    optimizer: str = "adamw"
    checkpoint: str | tuple[str, ...] | None = None
    time_limit: float = 60.0
    kernels: bool | None = None
    bucket_bytes: int = 25 * 2**20
    outputs: str | tuple[str, ...] = "all"
    seed: int = 0
    mixed_precision: str | None = None
    reduce_dtype: str = "fp32"
    init: object = None  # None, a callable, or a checkpoint path (str)
    offload: str | dict = "none"  # "none", "auto" or {"params": f, "optimizer": g}
    mesh: str | tuple[int, ...] | None = None  # None, "search" or a mesh shape
    workers: int | str = 1  # processes planning a mesh search's meshes ("auto": one per core)

    def __post_init__(self) -> None:
        if isinstance(self.mesh, list):
            object.__setattr__(self, "mesh", tuple(self.mesh))
        _check_mesh(self.mesh)
        if isinstance(self.checkpoint, list):
            object.__setattr__(self, "checkpoint", tuple(self.checkpoint))
        if isinstance(self.outputs, list):
            object.__setattr__(self, "outputs", tuple(self.outputs))
        outs = self.outputs
        if not (outs in ("all", "loss", "local") or (isinstance(outs, tuple) and outs
                                                     and all(isinstance(n, str) for n in outs))):
            raise AutoparError(f"outputs must be 'all', 'loss', 'local' or a list of output field names, got {outs!r}")
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
        if isinstance(self.bucket_bytes, bool) or not isinstance(self.bucket_bytes, int) or self.bucket_bytes < 1:
            raise AutoparError(f"bucket_bytes must be a positive integer (bytes per gradient chunk), "
                               f"got {self.bucket_bytes!r}")
        if self.mixed_precision not in (None, "bf16", "fp16"):
            raise AutoparError(f"mixed_precision must be None, 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.reduce_dtype not in DTYPES:
            raise AutoparError(f"reduce_dtype must be one of {', '.join(DTYPES)}, got {self.reduce_dtype!r}")
        if self.kernels not in (None, True, False):
            raise AutoparError(f"kernels must be None (on CUDA only), True or False, got {self.kernels!r}")
        if not (self.init is None or callable(self.init) or (isinstance(self.init, str) and self.init)):
            raise AutoparError(f"init must be None (the model's weights and initialisers), a function "
                               f"init(name, local_tensor, global_shape, local_slices) or the path of a safetensors "
                               f"checkpoint, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise AutoparError(f"seed must be an integer >= 0, got {self.seed!r}")
        _check_offload(self.offload)
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                       or self.workers < 1):
            raise AutoparError(f"workers must be a positive integer or 'auto' (one per CPU core), got {self.workers!r}")

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

    @property
    def compute_dtype(self):
        """The torch dtype compute runs in under ``mixed_precision`` (None: the model's own)."""
        import torch

        return getattr(torch, DTYPES[self.mixed_precision]) if self.mixed_precision else None

    def budget(self, cluster) -> float:
        """Bytes per device the plan must fit: ``memory_budget``, or the device's memory."""
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
        if isinstance(self.outputs, tuple):
            data["outputs"] = list(self.outputs)
        if isinstance(self.mesh, tuple):
            data["mesh"] = list(self.mesh)
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


def _check_mesh(mesh) -> None:
    if mesh is None or mesh == "search":
        return
    shape_ok = isinstance(mesh, tuple) and 1 <= len(mesh) <= 3 and all(
        not isinstance(n, bool) and isinstance(n, int) and n >= 1 for n in mesh)
    if not shape_ok:
        raise AutoparError(f"mesh must be None (the cluster's own mesh), 'search' (plan every mesh of the cluster's "
                           f"devices and keep the fastest) or a shape of 1 to 3 positive integers such as (16, 4), "
                           f"got {mesh!r}")


def _check_offload(offload) -> None:
    if offload in ("none", "auto"):
        return
    fractions_ok = isinstance(offload, dict) and offload and set(offload) <= {"params", "optimizer"} and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= 1 for v in offload.values())
    if not fractions_ok:
        raise AutoparError(f"offload must be 'none', 'auto' or a dict {{'params': f, 'optimizer': g}} of fractions "
                           f"between 0 and 1 (the share of parameter chunks and of optimizer state kept on the "
                           f"host), got {offload!r}")


def describe_init(init) -> str | None:
    """``init`` as JSON: None, the checkpoint path, or ``"function <name>"`` for a function."""
    if callable(init):
        return f"function {getattr(init, '__name__', None) or type(init).__name__}"
    return init


def _shallow(options: PlanOptions) -> dict:
    """Field name -> value, not copied (``dataclasses.asdict`` would deep-copy a function ``init``)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}
