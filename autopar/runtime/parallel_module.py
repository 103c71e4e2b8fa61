"""ParallelModule: what ``autoparallelize`` returns on each rank.

An ``fx.GraphModule`` whose parameters are this rank's shards (so any elementwise torch
optimizer works unchanged on ``.parameters()``), whose ``.code`` shows every collective, and
which every rank calls with the same global inputs, getting the full outputs back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from autopar.spec import ShardingSpec
from autopar.tracer.fused import FusedPiece


@dataclass(frozen=True, slots=True)
class ParamLayout:
    """How one stored parameter or buffer is laid out on the mesh."""

    spec: ShardingSpec  # the spec of the local shard
    shape: tuple[int, ...]  # the global shape
    names: tuple[str, ...]  # every name the original model knows it by (tied weights: several)
    is_param: bool  # a Parameter (else a buffer)


@dataclass(frozen=True)
class ShardedOutput:
    """An output left on the mesh (``outputs="local"``): this rank's ``local`` piece of a ``shape`` tensor
    laid out as ``spec``. ``full()`` gathers it (collective: call it on every rank) into what
    ``outputs="all"`` would have returned, gradient included (every rank seeds the same loss, so its
    gradient is scaled by 1/world as codegen scales gathered outputs)."""

    local: torch.Tensor
    spec: ShardingSpec
    shape: tuple[int, ...]
    _owner: object = field(repr=False, compare=False, default=None)

    def full(self) -> torch.Tensor:
        from autopar.runtime.codegen import scale_grad

        mesh = self._owner.mesh
        whole = self._owner.sc.apply(self.local, self.spec, ShardingSpec.replicate(len(self.shape)), self.shape, mesh)
        return scale_grad(whole, 1.0 / mesh.world_size)


class LocalOutput(torch.nn.Module):
    """``self.local_out(x, 'S0RR', (4, 16, 128))`` in the per-rank graph: x as a ShardedOutput."""

    def __init__(self, sc, mesh) -> None:
        super().__init__()
        self.sc, self.mesh = sc, mesh

    def forward(self, x, spec: str, shape: tuple[int, ...]) -> ShardedOutput:
        return ShardedOutput(x, ShardingSpec.parse(spec), tuple(shape), self)


class ParallelModule(fx.GraphModule):
    def _setup(self, *, mesh, sc, params: dict[str, ParamLayout], pieces: dict[str, FusedPiece] | None = None,
               grad_sync=None) -> None:
        # pieces: the stored pieces of weights the tracer cut (tracer/fused.py); gathered state and
        # gradients join them back under the original name.
        self._mesh, self._sc, self._params = mesh, sc, params
        self._pieces = dict(pieces or {})
        self._grad_sync = grad_sync  # grad_sync.GradSync: the chunks of the replicated parameters
        self.gemini = None  # gemini.ChunkManager when offload is on (the chunks then also move)
        self.plan = None  # the Plan this module runs (autopar.solver.full_plan)
        self.checkpoint_plan = None  # CheckpointPlan when regions recompute in backward
        self.kernel_substitutions = ()  # kernel_pass.Substitution records, when kernels ran

    def attach_plan(self, plan) -> None:
        self.plan, self.checkpoint_plan = plan, plan.checkpoint

    def report(self) -> str:
        """Every decision: the sharding plan, the recomputed regions, the kernels swapped in."""
        parts = [self.plan.report() if self.plan is not None else "no plan"]
        if self.kernel_substitutions:
            parts.append("Triton kernels: " + ", ".join(map(str, self.kernel_substitutions)))
        return "\n\n".join(parts)

    @property
    def mesh(self):
        return self._mesh

    def no_sync(self):
        """Gradient accumulation: inside, backward sums gradients locally; the next backward outside reduces
        them all at once (``.grad`` is written then), as DDP's ``no_sync``."""
        if self.gemini is not None:
            from autopar.errors import AutoparError

            raise AutoparError("no_sync (gradient accumulation) is not supported with offload yet: "
                               "pass offload='none', or step after every backward")
        return self._grad_sync.no_sync()

    def local_grad(self, name: str) -> torch.Tensor | None:
        """This rank's gradient of stored parameter ``name``: its ``.grad``, or under offload its slot of its
        chunk's gradient buffer (wherever the chunk is; None when it got none)."""
        if self.gemini is not None and name in self._grad_sync.slots:
            return self._grad_sync.slot_grad(name)
        return self._attr(name).grad

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
        """Scale every gradient so the global norm is at most ``max_norm``; returns the global norm before.

        The norm is the single-device model's: each element counted once, however many ranks hold a
        replica of it (a parameter replicated on axes of total size r adds its local sum / r, then one
        all-reduce over the world sums them). Every rank gets the same norm and scales alike, as
        ``torch.nn.utils.clip_grad_norm_`` does on one device.
        """
        import math

        import torch.distributed as dist

        shape = self._mesh.mesh_shape
        inf = math.isinf(norm_type)
        total = torch.zeros((), dtype=torch.float64, device=self._mesh.device)
        grads = []
        for name, layout in self._params.items():
            grad = self.local_grad(name) if layout.is_param else None
            if grad is None:
                continue
            grads.append(grad)
            g = grad.detach().to(total.device).double()
            if inf:
                total = torch.maximum(total, g.abs().max())
            else:
                replicas = math.prod(n for a, n in enumerate(shape) if a not in layout.spec.used_axes())
                total += g.abs().pow(norm_type).sum() / replicas
        dist.all_reduce(total, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM)
        norm = total if inf else total.pow(1.0 / norm_type)
        coef = torch.clamp(max_norm / (norm + eps), max=1.0)
        for grad in grads:
            grad.mul_(coef.to(grad.dtype))
        return norm.to(grads[0].dtype if grads else torch.float32)

    def param_spec(self, name: str) -> ShardingSpec:
        """The spec a parameter is stored in, by its original name (for a weight stored in pieces, the
        spec of its first piece; ``piece_specs`` gives them all)."""
        for own, layout in self._params.items():
            if name == own or name in layout.names:
                return layout.spec
        pieces = self.piece_specs(name)
        if pieces:
            return pieces[0]
        raise KeyError(f"no parameter or buffer named {name!r}; known: {sorted(self._params)}")

    def piece_specs(self, name: str) -> list[ShardingSpec]:
        """The specs of the pieces a fused projection's weight ``name`` is stored in, in order ([] if none)."""
        pieces = sorted((p.start, own) for own, p in self._pieces.items() if p.original == name)
        return [self._params[own].spec for _start, own in pieces]

    def _gathered(self, pick) -> dict[str, torch.Tensor | None]:
        out: dict[str, torch.Tensor | None] = {}
        with torch.no_grad():
            for name, layout in self._params.items():
                local = pick(name, layout.is_param)
                full = None
                if local is not None:
                    full = self._sc.apply(local.detach().to(self._mesh.device), layout.spec,
                                          ShardingSpec.replicate(len(layout.shape)), layout.shape, self._mesh)
                    if self.gemini is not None and full.untyped_storage().data_ptr() == \
                            local.untyped_storage().data_ptr():
                        full = full.clone()  # not a view: it would keep a chunk buffer from leaving the device
                for alias in layout.names:
                    out[alias] = full
        joined: dict[str, list] = {}
        for own, piece in self._pieces.items():
            joined.setdefault(piece.original, []).append((piece.start, piece.dim, out.pop(own)))
        for orig, parts in joined.items():
            parts.sort(key=lambda p: p[0])
            tensors = [t for _s, _d, t in parts]
            out[orig] = None if any(t is None for t in tensors) else torch.cat(tensors, dim=parts[0][1])
        return out

    def _attr(self, name: str) -> torch.Tensor:
        obj = self
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer gathered to its full shape, keyed by the original model's names."""
        return self._gathered(lambda name, _is_param: self._attr(name))  # type: ignore[return-value]

    def full_grads(self) -> dict[str, torch.Tensor | None]:
        """Every parameter's gradient gathered to its full shape (None where there is none)."""
        grads = self._gathered(lambda name, is_param: self.local_grad(name) if is_param else None)
        return {k: v for k, v in grads.items() if self._is_param_name(k)}

    def _is_param_name(self, name: str) -> bool:
        if any(p.original == name and self._params[own].is_param for own, p in self._pieces.items()):
            return True
        return any(layout.is_param and (name == own or name in layout.names) for own, layout in self._params.items())
