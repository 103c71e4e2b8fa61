"""Shape consistency: the cheapest way to turn a tensor laid out as one ShardingSpec into another.

Planning is pure (no process group): a Dijkstra search over the specs reachable by single
CommSteps, one mesh axis at a time, weighted by the forward plus backward time of each step
under the cluster's alpha/beta model. Execution (`apply`) only runs the planned steps with the
autograd-aware collectives of `autopar.runtime.collectives`.

Steps on mesh axis ``a`` (n = mesh_shape[a]); every backward is the exact adjoint of its forward,
as a linear map on the tuple of per-rank local tensors:

    all_gather(a, dim)           S(dim) -> R       all-gather        | reduce-scatter (sum)
    split(a, dim)                R -> S(dim)       keep own chunk    | zero-pad to the full size
    all_reduce(a)                P -> R            all-reduce (sum)  | all-reduce (sum)
    reduce_scatter(a, dim)       P -> S(dim)       reduce-scatter    | all-gather
    all_to_all(a, dim, dim_to)   S(dim) -> S(dim_to)  all-to-all     | all-to-all back
    to_partial(a)                R -> P            divide by n       | divide by n

Order constraint: a dim's axes are ascending (the piece index of S01 is c0 * n1 + c1), so a step
may only remove the last axis of a dim's tuple and only append an axis larger than all of them.

Cost of one collective on axis a, B the bytes of the local tensor involved, alpha and beta the axis's
link for that kind of collective (``ClusterInfo.link``):
all-gather / reduce-scatter ``alpha + (n-1)/n * B_full * beta`` (B_full the larger side),
all-reduce ``alpha + 2(n-1)/n * B * beta``, all-to-all ``alpha + (n-1)/n * B * beta``;
split and to_partial cost a local copy, ``B / (mem_bandwidth * efficiency)``, never 0.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autopar.cluster import ClusterInfo
from autopar.spec import ShardingSpec

if TYPE_CHECKING:
    import torch

    from autopar.runtime.mesh import RuntimeMesh

# kind -> (forward, backward) in words; the names say what crosses the wire.
_WIRE = {
    "all_gather": ("all-gather", "reduce-scatter (sum)"),
    "split": ("keep this rank's chunk (no communication)", "zero-pad to the full size (no communication)"),
    "all_reduce": ("all-reduce (sum)", "all-reduce (sum)"),
    "reduce_scatter": ("reduce-scatter (sum)", "all-gather"),
    "all_to_all": ("all-to-all", "all-to-all back"),
    "to_partial": ("divide by n (no communication)", "divide by n (no communication)"),
}


def _all_pairs(n: int, heads: list[int], tails: list[int], weights: list[float]):
    """[i, j] -> the cheapest i -> j over the arcs (heads[k] -> tails[k] at weights[k] >= 0 s): scipy's Dijkstra
    from every node (C), or the same Dijkstra in Python without scipy or with an arc of 0 s."""
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra
    except ImportError:
        dijkstra = None
    if dijkstra is None or min(weights, default=1.0) <= 0:  # 0 s arcs (an empty tensor): a sparse matrix drops them
        dist = np.full((n, n), np.inf)
        out: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for a, b, w in zip(heads, tails, weights):
            out[a].append((b, w))
        for s in range(n):
            row, heap = dist[s], [(0.0, s)]
            row[s] = 0.0
            while heap:
                d, u = heapq.heappop(heap)
                if d > row[u]:
                    continue
                for v, w in out[u]:
                    if d + w < row[v]:
                        row[v] = d + w
                        heapq.heappush(heap, (d + w, v))
        return dist
    return dijkstra(csr_matrix((weights, (heads, tails)), shape=(n, n)), directed=True)


# kind -> (forward, backward) collective, as the cluster's links price them (ClusterInfo.link)
_ADJOINT = {"all_gather": ("all_gather", "reduce_scatter"), "reduce_scatter": ("reduce_scatter", "all_gather"),
            "all_reduce": ("all_reduce", "all_reduce"), "all_to_all": ("all_to_all", "all_to_all")}


@dataclass(frozen=True, slots=True)
class CommStep:
    """One collective (or local split) on one mesh axis, from spec ``src`` to spec ``dst``."""

    kind: str  # one of _WIRE
    axis: int
    dim: int | None  # the tensor dim gathered / split / scattered / sent (all_to_all: dim_from)
    dim_to: int | None  # all_to_all only: the dim that becomes split
    src: ShardingSpec
    dst: ShardingSpec

    def __str__(self) -> str:
        args = [f"axis={self.axis}"]
        if self.dim is not None:
            args.append(f"dim={self.dim}")
        if self.dim_to is not None:
            args.append(f"dim_to={self.dim_to}")
        return f"{self.kind}({', '.join(args)})"

    def describe(self) -> str:
        """``all_gather(axis=0, dim=1): S0S1 -> S0R, all-gather in forward, reduce-scatter (sum) in backward``."""
        fwd, bwd = _WIRE[self.kind]
        return f"{self}: {self.src} -> {self.dst}, {fwd} in forward, {bwd} in backward"


def _append(dims: tuple[tuple[int, ...], ...], dim: int, axis: int) -> tuple[tuple[int, ...], ...] | None:
    """``dims`` with ``axis`` appended to ``dims[dim]``, or None when the order constraint forbids it."""
    if dims[dim] and dims[dim][-1] > axis:
        return None
    return dims[:dim] + (dims[dim] + (axis,),) + dims[dim + 1:]


def _remove_last(dims: tuple[tuple[int, ...], ...], dim: int) -> tuple[tuple[int, ...], ...]:
    return dims[:dim] + (dims[dim][:-1],) + dims[dim + 1:]


class ShapeConsistencyManager:
    """Plans (cached, pure) and applies (autograd-aware) conversions between ShardingSpecs."""

    def __init__(self, cluster: ClusterInfo) -> None:
        self.cluster = cluster
        self.mesh_shape = tuple(cluster.mesh_shape)
        self._copy_rate = 1.0 / (cluster.mem_bandwidth * cluster.efficiency)  # s/byte of a local copy
        self._plans: dict[tuple, tuple[CommStep, ...]] = {}  # (src, dst, shape, itemsize) -> steps
        self._trees: dict[tuple, tuple[dict, dict]] = {}  # (src, shape, itemsize) -> (dist, prev)
        self._edges: dict[tuple, dict] = {}  # (shape, itemsize) -> {spec: [(seconds, step), ...]}, shared by sources
        self._tables: dict[tuple, tuple[dict, object]] = {}  # (shape, itemsize) -> ({spec: i}, seconds i -> j)

    # ---- planning (pure) ---------------------------------------------------------------
    def cost(self, src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], itemsize: int) -> float:
        """Seconds for forward plus backward of ``plan(src, dst, shape, itemsize)``; 0.0 when src == dst."""
        return self.costs(src, (dst,), shape, itemsize)[0]

    def costs(self, src: ShardingSpec, dsts: Sequence[ShardingSpec], shape: Sequence[int],
              itemsize: int) -> list[float]:
        """``[cost(src, d, shape, itemsize) for d in dsts]``, read from the all-pairs table of the spec graph
        of ``shape`` (``_table``: a 3-D mesh's planning prices thousands of pairs per shape)."""
        shape, itemsize = tuple(int(s) for s in shape), int(itemsize)
        index, seconds = self._table(shape, itemsize)
        row = index.get(src)
        if row is None:  # every spec that fits is in the table: src does not fit (_tree says so)
            dist, _ = self._tree(src, shape, itemsize)
            return [dist[d] for d in dsts]
        cols = [index.get(d, -1) for d in dsts]
        if -1 in cols:
            raise ValueError(self._unreachable(src, dsts[cols.index(-1)], shape))
        return seconds[row, cols].tolist()

    def cost_matrix(self, srcs: Sequence[ShardingSpec], dsts: Sequence[ShardingSpec], shape: Sequence[int],
                    itemsize: int):
        """``[i, j] -> cost(srcs[i], dsts[j], shape, itemsize)`` as a numpy array (one lookup per edge of the
        strategy graph)."""
        shape, itemsize = tuple(int(s) for s in shape), int(itemsize)
        index, seconds = self._table(shape, itemsize)
        rows, cols = [index.get(s, -1) for s in srcs], [index.get(d, -1) for d in dsts]
        if -1 in rows or -1 in cols:  # the error names the spec that does not fit
            return np.array([self.costs(s, dsts, shape, itemsize) for s in srcs]).reshape(len(srcs), len(dsts))
        return seconds[np.ix_(rows, cols)]

    def plan(self, src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], itemsize: int) -> tuple[CommStep, ...]:
        """The cheapest sequence of CommSteps turning ``src`` into ``dst`` (``()`` when they are equal)."""
        key = (src, dst, tuple(int(s) for s in shape), int(itemsize))
        if key in self._plans:
            return self._plans[key]
        dist, prev = self._tree(src, key[2], key[3])
        if dst not in dist:
            raise ValueError(self._unreachable(src, dst, key[2]))
        steps: list[CommStep] = []
        spec = dst
        while spec != src:
            step = prev[spec]
            steps.append(step)
            spec = step.src
        self._plans[key] = tuple(reversed(steps))
        return self._plans[key]

    def graph(self, starts, shape: tuple[int, ...], itemsize: int) -> tuple[list[ShardingSpec], list[tuple]]:
        """The spec graph whose shortest paths ``cost`` measures, breadth first from ``starts``: (the specs
        reached, in order of discovery, ``starts`` first; arcs ``(i, j, seconds)``, the cheapest single
        CommStep from spec i to spec j). ``_table`` searches it; solver/flow.py poses an edge as a flow on it."""
        order: list[ShardingSpec] = []
        index: dict[ShardingSpec, int] = {}
        for spec in starts:
            if spec not in index:
                index[spec] = len(order)
                order.append(spec)
        arcs: list[tuple[int, int, float]] = []
        k = 0
        while k < len(order):
            best: dict = {}
            for seconds, step in self._steps(order[k], shape, itemsize):
                if step.dst != order[k] and seconds < best.get(step.dst, math.inf):
                    best[step.dst] = seconds
            for dst, seconds in best.items():
                if dst not in index:
                    index[dst] = len(order)
                    order.append(dst)
                arcs.append((k, index[dst], seconds))
            k += 1
        return order, arcs

    def _steps(self, spec: ShardingSpec, shape: tuple[int, ...], itemsize: int) -> list[tuple[float, CommStep]]:
        """The single CommSteps out of ``spec`` with their seconds, cached per (shape, itemsize)."""
        edges = self._edges.setdefault((shape, itemsize), {})
        if spec not in edges:
            full_bytes = math.prod(shape) * itemsize
            edges[spec] = [(self._step_cost(st, full_bytes), st) for st in self._neighbours(spec, shape)]
        return edges[spec]

    def _table(self, shape: tuple[int, ...], itemsize: int) -> tuple[dict, object]:
        """({spec: index}, [i, j] -> seconds of the cheapest i -> j) over every spec that fits ``shape``.

        The spec graph is strongly connected (any spec gathers and reduces to R, and R splits and goes
        partial to any spec that fits), so the specs reached from R are all of them. The distances are
        those of ``_tree``'s Dijkstra bit for bit: no arc costs less than 0, so both settle each spec at
        min over its in-arcs of (distance of the arc's source + its seconds), summed in the same order;
        only the choice between equally cheap paths may differ, and ``plan`` keeps ``_tree``'s."""
        key = (shape, itemsize)
        if key not in self._tables:
            order, arcs = self.graph([ShardingSpec.replicate(len(shape))], shape, itemsize)
            heads, tails, weights = (list(col) for col in zip(*arcs)) if arcs else ([], [], [])
            self._tables[key] = ({spec: i for i, spec in enumerate(order)},
                                 _all_pairs(len(order), heads, tails, weights))
        return self._tables[key]

    def _tree(self, src: ShardingSpec, shape: tuple[int, ...], itemsize: int) -> tuple[dict, dict]:
        """Dijkstra from ``src``: (seconds to every reachable spec, the last step on its cheapest path)."""
        key = (src, shape, itemsize)
        if key in self._trees:
            return self._trees[key]
        if src.ndim != len(shape) or not src.fits(shape, self.mesh_shape):
            raise ValueError(f"source spec {src} does not fit shape {shape} on mesh {self.mesh_shape}: every "
                             f"mesh axis must exist and every split dim must divide evenly")
        dist: dict[ShardingSpec, float] = {src: 0.0}
        prev: dict[ShardingSpec, CommStep] = {}
        tie = itertools.count()  # specs are not orderable: break cost ties by discovery order
        heap = [(0.0, next(tie), src)]
        done: set[ShardingSpec] = set()
        while heap:
            d, _, spec = heapq.heappop(heap)
            if spec in done:
                continue
            done.add(spec)
            for seconds, step in self._steps(spec, shape, itemsize):
                nd = d + seconds
                if nd < dist.get(step.dst, math.inf):
                    dist[step.dst] = nd
                    prev[step.dst] = step
                    heapq.heappush(heap, (nd, next(tie), step.dst))
        self._trees[key] = (dist, prev)
        return dist, prev

    def _neighbours(self, spec: ShardingSpec, shape: tuple[int, ...]):
        """Every CommStep from ``spec`` that keeps the order constraint and even divisibility."""
        dims, partial = spec.dims, spec.partial
        used = spec.used_axes()

        def divides(new_dims, dim):
            return shape[dim] % math.prod(self.mesh_shape[a] for a in new_dims[dim]) == 0

        for axis in range(len(self.mesh_shape)):
            if axis in partial:  # P -> R, P -> S(dim)
                rest = tuple(a for a in partial if a != axis)
                yield CommStep("all_reduce", axis, None, None, spec, ShardingSpec(dims, rest))
                for dim in range(len(dims)):
                    new = _append(dims, dim, axis)
                    if new is not None and divides(new, dim):
                        yield CommStep("reduce_scatter", axis, dim, None, spec, ShardingSpec(new, rest))
            elif axis in used:  # axis splits some dim: only movable when it is that dim's last axis
                dim = next(d for d, axes in enumerate(dims) if axis in axes)
                if dims[dim][-1] != axis:
                    continue
                gathered = _remove_last(dims, dim)
                yield CommStep("all_gather", axis, dim, None, spec, ShardingSpec(gathered, partial))
                for dim_to in range(len(dims)):
                    new = _append(gathered, dim_to, axis) if dim_to != dim else None
                    if new is not None and divides(new, dim_to):
                        yield CommStep("all_to_all", axis, dim, dim_to, spec, ShardingSpec(new, partial))
            else:  # R on this axis: R -> S(dim), R -> P
                for dim in range(len(dims)):
                    new = _append(dims, dim, axis)
                    if new is not None and divides(new, dim):
                        yield CommStep("split", axis, dim, None, spec, ShardingSpec(new, partial))
                yield CommStep("to_partial", axis, None, None, spec,
                               ShardingSpec(dims, tuple(sorted(partial + (axis,)))))

    def _local_bytes(self, spec: ShardingSpec, full_bytes: int) -> float:
        return full_bytes / math.prod(self.mesh_shape[a] for axes in spec.dims for a in axes)

    def _step_cost(self, step: CommStep, full_bytes: int) -> float:
        """Forward plus backward seconds of one step (backward runs the adjoint on the same bytes)."""
        n = self.mesh_shape[step.axis]
        b_in, b_out = self._local_bytes(step.src, full_bytes), self._local_bytes(step.dst, full_bytes)
        if n == 1 or step.kind in ("split", "to_partial"):  # local: a copy forward, a copy backward
            return (b_in + b_out) * self._copy_rate
        ring = (n - 1) / n
        # all_gather, reduce_scatter (B_full = the larger side), all_to_all (equal sides); backward runs the
        # adjoint collective on the same bytes
        wire = 2 * ring * b_in if step.kind == "all_reduce" else ring * max(b_in, b_out)
        links = (self.cluster.link(step.axis, kind) for kind in _ADJOINT[step.kind])
        return sum(alpha + wire * beta for alpha, beta in links)

    def _unreachable(self, src: ShardingSpec, dst: ShardingSpec, shape: tuple[int, ...]) -> str:
        why = "it does not fit"
        if dst.ndim != len(shape):
            why = f"it has {dst.ndim} dims"
        elif any(a >= len(self.mesh_shape) for a in dst.used_axes()):
            why = f"it uses a mesh axis the {len(self.mesh_shape)}-d mesh lacks"
        elif not dst.fits(shape, self.mesh_shape):
            why = "its split does not divide the shape evenly"
        return (f"cannot reshard {src} -> {dst} for shape {shape} on mesh {self.mesh_shape}: "
                f"{why}; pick a target spec that fits the shape and the mesh")

    # ---- execution (needs a RuntimeMesh) -------------------------------------------------
    def apply(self, local: torch.Tensor, src: ShardingSpec, dst: ShardingSpec, global_shape: Sequence[int],
              mesh: RuntimeMesh, uniform: frozenset = frozenset()) -> torch.Tensor:
        """Run ``plan(src, dst)`` on this rank's local tensor; differentiable (each step's backward is its
        adjoint). ``uniform``: mesh axes on which the result's gradient is the same on every rank
        (``collectives.run_step``)."""
        from autopar.runtime import collectives as C

        if tuple(mesh.mesh_shape) != self.mesh_shape:
            raise ValueError(f"the runtime mesh {mesh.mesh_shape} is not the planned mesh {self.mesh_shape}")
        expected = src.local_shape(global_shape, self.mesh_shape)
        if tuple(local.shape) != expected:
            raise ValueError(f"a {src} piece of a {tuple(global_shape)} tensor has local shape {expected}, "
                             f"got {tuple(local.shape)} on rank {mesh.rank}")
        given = local
        for step in self.plan(src, dst, global_shape, local.element_size()):
            local = C.run_step(local, step, mesh, uniform)
        if local is not given and local.untyped_storage().nbytes() > local.numel() * local.element_size():
            # a piece of a larger buffer (a chunk of a gather's, or a slice of the input's own storage when
            # the resharding only splits further): copied out, so what a consumer saves for backward holds
            # the piece (the memory model's local bytes), not the whole buffer
            local = local.clone()
        return local

    def shard(self, global_tensor: torch.Tensor, spec: ShardingSpec, mesh: RuntimeMesh) -> torch.Tensor:
        """This rank's local piece of a full tensor (the same on every rank) laid out as ``spec``.

        Split dims take this rank's slice. On each partial axis of size n a floating tensor is divided
        by n on every rank (so the pieces sum to the tensor); an integer tensor is kept whole on
        coordinate 0 of that axis and zero elsewhere. The result is a fresh tensor (differentiable).
        """
        from autopar.runtime import collectives as C

        out = global_tensor[spec.local_slices(global_tensor.shape, self.mesh_shape, mesh.coord)].clone()
        for axis in spec.partial:
            out = C.local_to_partial(out, mesh.size(axis), mesh.coord[axis])
        return out

    def gather(self, local: torch.Tensor, spec: ShardingSpec, global_shape: Sequence[int],
               mesh: RuntimeMesh) -> torch.Tensor:
        """The full tensor on every rank: ``apply`` to the replicated spec."""
        return self.apply(local, spec, ShardingSpec.replicate(spec.ndim), global_shape, mesh)
