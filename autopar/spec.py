"""ShardingSpec: how one tensor is laid out over a logical device mesh.

For each tensor dim, the tuple of mesh axes it is split over (ascending, so that the
layout is the one DTensor gives ``[Shard(d), Shard(d)]``), plus the mesh axes over which
the tensor is a *partial sum* (the global tensor is the sum of the local ones).

Notation, one token per tensor dim, then ``+P`` and the partial axes::

    S0R      dim 0 split over axis 0, dim 1 replicated
    S01R     dim 0 split over axes 0 and 1 (shard index = c0 * n1 + c1)
    RS1+P0   dim 1 split over axis 1, partial sum over axis 0
    ()       a 0-d tensor, replicated; ``()+P0`` a partial 0-d tensor

Sharding is even: a dim of size n split over axes with k shards in all needs n % k == 0.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_TOKEN = re.compile(r"R|S\d+")


@dataclass(frozen=True, slots=True)
class ShardingSpec:
    dims: tuple[tuple[int, ...], ...]
    partial: tuple[int, ...] = ()
    # specs key the planner's dicts millions of times on a 3-D mesh: hash once (the fields are immutable)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return self._hash

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.dims, self.partial)))
        seen: list[int] = []
        for axes in self.dims:
            if tuple(sorted(axes)) != tuple(axes):
                raise ValueError(f"mesh axes of a dim must be ascending, got {axes} in {self.dims}")
            seen.extend(axes)
        if tuple(sorted(self.partial)) != tuple(self.partial):
            raise ValueError(f"partial axes must be ascending, got {self.partial}")
        seen.extend(self.partial)
        if len(seen) != len(set(seen)) or any(a < 0 for a in seen):
            raise ValueError(f"each mesh axis may appear once, got dims={self.dims} partial={self.partial}")

    # ---- construction -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> ShardingSpec:
        """``ShardingSpec.parse("RS1+P0")``: the inverse of ``str``."""
        body, _, part = text.strip().partition("+P")
        if "+" in part or (_ and not part.isdigit()):
            raise ValueError(f"cannot parse sharding spec {text!r}: expected e.g. 'S0R', 'RS1+P0'")
        dims: list[tuple[int, ...]] = []
        if body != "()":
            pos = 0
            for m in _TOKEN.finditer(body):
                if m.start() != pos:
                    break
                tok = m.group()
                dims.append(() if tok == "R" else tuple(int(c) for c in tok[1:]))
                pos = m.end()
            if pos != len(body) or not body:
                raise ValueError(f"cannot parse sharding spec {text!r}: expected tokens R or S<axes>, e.g. 'S0R'")
        return cls(tuple(dims), tuple(int(c) for c in part))

    @classmethod
    def replicate(cls, ndim: int) -> ShardingSpec:
        return cls(((),) * ndim)

    @classmethod
    def from_axis_map(cls, ndim: int, shard: dict[int, int], partial: Sequence[int] = ()) -> ShardingSpec:
        """Build from ``{mesh axis: tensor dim}`` and the partial axes."""
        dims: list[list[int]] = [[] for _ in range(ndim)]
        for axis, dim in shard.items():
            dims[dim].append(axis)
        return cls(tuple(tuple(sorted(d)) for d in dims), tuple(sorted(partial)))

    # ---- faces ---------------------------------------------------------------------
    def __str__(self) -> str:
        body = "".join("R" if not axes else "S" + "".join(map(str, axes)) for axes in self.dims)
        body = body or "()"
        return body + ("+P" + "".join(map(str, self.partial)) if self.partial else "")

    def __repr__(self) -> str:
        return f"ShardingSpec.parse({str(self)!r})"

    # ---- queries --------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.dims)

    def axis_map(self) -> dict[int, int | str]:
        """``{mesh axis: tensor dim}`` for split axes and ``{axis: "P"}`` for partial axes."""
        out: dict[int, int | str] = {a: d for d, axes in enumerate(self.dims) for a in axes}
        out.update({a: "P" for a in self.partial})
        return out

    def used_axes(self) -> set[int]:
        return {a for axes in self.dims for a in axes} | set(self.partial)

    def partial_free_axes(self, src: ShardingSpec) -> list[int]:
        """The mesh axes ``src`` is a partial sum on and this spec is not (those an all-reduce resolves)."""
        return [a for a in src.partial if a not in self.partial]

    def is_replicated(self) -> bool:
        return not self.used_axes()

    def shards(self, dim: int, mesh_shape: Sequence[int]) -> int:
        return math.prod(mesh_shape[a] for a in self.dims[dim])

    def fits(self, shape: Sequence[int], mesh_shape: Sequence[int]) -> bool:
        """True when every split dim divides evenly and every axis exists on the mesh."""
        if len(shape) != len(self.dims):
            return False
        n = len(mesh_shape)
        for size, axes in zip(shape, self.dims):  # plain loops: strategy enumeration asks this ~10^5 times
            shards = 1
            for a in axes:
                if a >= n:
                    return False
                shards *= mesh_shape[a]
            if size % shards:
                return False
        return all(a < n for a in self.partial)

    def local_shape(self, shape: Sequence[int], mesh_shape: Sequence[int]) -> tuple[int, ...]:
        if not self.fits(shape, mesh_shape):
            raise ValueError(f"spec {self} does not evenly shard shape {tuple(shape)} on mesh {tuple(mesh_shape)}")
        return tuple(shape[d] // self.shards(d, mesh_shape) for d in range(self.ndim))

    def shard_index(self, dim: int, mesh_shape: Sequence[int], coord: Sequence[int]) -> int:
        """Which of ``shards(dim)`` pieces of ``dim`` the device at ``coord`` holds (axis order major first)."""
        idx = 0
        for a in self.dims[dim]:
            idx = idx * mesh_shape[a] + coord[a]
        return idx

    def local_slices(self, shape: Sequence[int], mesh_shape: Sequence[int], coord: Sequence[int]) -> tuple[slice, ...]:
        local = self.local_shape(shape, mesh_shape)
        starts = [self.shard_index(d, mesh_shape, coord) * local[d] for d in range(self.ndim)]
        return tuple(slice(start, start + size) for start, size in zip(starts, local))

    # ---- DTensor interop ----------------------------------------------------------------
    def to_placements(self, mesh_ndim: int) -> tuple:
        """One DTensor placement per mesh axis: ``Shard(d)``, ``Partial()`` or ``Replicate()``."""
        from torch.distributed.tensor import Partial, Replicate, Shard

        amap = self.axis_map()
        if any(a >= mesh_ndim for a in amap):
            raise ValueError(f"spec {self} uses a mesh axis beyond a {mesh_ndim}-d mesh")
        return tuple(
            Partial() if amap.get(a) == "P" else Shard(amap[a]) if a in amap else Replicate()  # type: ignore[arg-type]
            for a in range(mesh_ndim)
        )

    @classmethod
    def from_placements(cls, placements: Sequence, ndim: int) -> ShardingSpec:
        from torch.distributed.tensor import Partial, Replicate, Shard

        shard: dict[int, int] = {}
        partial: list[int] = []
        for axis, p in enumerate(placements):
            if isinstance(p, Shard):
                shard[axis] = p.dim % ndim if ndim else p.dim
            elif isinstance(p, Partial):
                if p.reduce_op != "sum":
                    raise ValueError(f"only Partial('sum') has a ShardingSpec, got {p}")
                partial.append(axis)
            elif not isinstance(p, Replicate):
                raise ValueError(f"unknown placement {p!r}")
        return cls.from_axis_map(ndim, shard, partial)
