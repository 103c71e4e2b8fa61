"""ClusterInfo: the devices, their logical mesh, and the numbers the cost model needs.

All quantities are SI: bytes, seconds, FLOP/s, bytes/s. An all-reduce on mesh axis ``a``
costs ``alpha[a] + beta[a] * bytes_on_the_wire`` (ring factors are applied by the cost
model); another kind of collective (all-gather, reduce-scatter, all-to-all) scales alpha and beta
by its factors in ``collectives`` where they were measured (``profile``: on gloo here a byte of an
all-gather costs about 1.5x, of a reduce-scatter about 4x, one of an all-reduce), else by 1
(``link``). Ranks map to mesh coordinates in row-major order: on a (2, 4) mesh rank 5 is (1, 1).

A cluster may also know its physical layout (``Topology``: nodes x devices per node, the link
inside a node and the link across nodes). Then any logical mesh of its devices
(``with_mesh``, ``Topology.meshes``) gets each axis's link from where its groups lie: rank r sits
on node ``r // per_node``, so on mesh ``(n_0, ..., n_k)`` a group on axis ``a`` spans
``span(a) = n_a x ... x n_k`` consecutive ranks' worth of strides, and lies inside one node iff
``span(a)`` divides ``per_node``; otherwise it crosses nodes and pays the slower link.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

GiB = 1024**3
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")  # the collectives the cost model prices

# name -> (memory bytes, peak half-precision FLOP/s, peak fp32 (tf32) FLOP/s, HBM bytes/s, host link bytes/s).
# The host link is the PCIe link between the device and its host's memory, each way, as a copy reaches it
# (about 80 % of the link's peak): Gen5 x16 for H100/H200 (SXM and PCIe cards alike), Gen4 x16 for A100 and
# the consumer cards.
_DEVICES = {
    "H100": (80 * GiB, 989e12, 494e12, 3.35e12, 50e9),
    "H100PCIe": (80 * GiB, 756e12, 378e12, 2.0e12, 50e9),
    "H200": (141 * GiB, 989e12, 494e12, 4.8e12, 50e9),
    "A100": (80 * GiB, 312e12, 156e12, 2.0e12, 25e9),
    "RTX3090": (24 * GiB, 71e12, 35.6e12, 0.936e12, 25e9),
    "RTX4090": (24 * GiB, 165e12, 82.6e12, 1.0e12, 25e9),
}
# cards without NVLink talk over PCIe (through the host), also inside a node
_PCIE_ONLY = ("H100PCIe", "RTX3090", "RTX4090")
# (alpha s, beta s/byte) for links: inside a node (NVLink), across nodes (400 Gb/s per GPU)
_INTRA = (1e-5, 1 / 360e9)
_INTER = (2e-5, 1 / 45e9)
_PCIE = (1e-5, 1 / 20e9)
# A CPU "device" under gloo on loopback; its "host" is the same memory (a copy: about 5 GB/s here).
_CPU = dict(memory=4 * GiB, peak=2e11, peak32=1e11, bw=2e10, link=(5e-5, 1 / 2e9), host=5e9)
# seconds per element of one AdamW step on the host (torch's fused CPU AdamW: 25.5 M parameters took
# 25-128 ms on this project's 2-core machine, bench/gemini.py)
HOST_ADAM_TIME = 2e-9


Link = tuple[float, float]  # (alpha s, beta s/byte)


@dataclass(frozen=True)
class Topology:
    """The physical cluster: ``nodes`` nodes of ``per_node`` devices; ``intra`` the (alpha, beta) of the link
    inside a node (NVLink), ``inter`` of the link across nodes. It fixes no logical mesh."""

    nodes: int
    per_node: int
    intra: Link
    inter: Link

    def __post_init__(self) -> None:
        for label, n in (("nodes", self.nodes), ("per_node", self.per_node)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"Topology.{label} must be a positive integer, got {n!r}")
        for label, link in (("intra", self.intra), ("inter", self.inter)):
            link = tuple(float(v) for v in link)
            if len(link) != 2 or min(link) < 0 or not all(map(math.isfinite, link)):
                raise ValueError(f"Topology.{label} must be (alpha seconds, beta seconds per byte) >= 0, got {link!r}")
            object.__setattr__(self, label, link)

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node

    def inside_node(self, mesh_shape: Sequence[int], axis: int) -> bool:
        """Every group on ``axis`` lies in one node: the devices ``axis`` and the axes after it span divide a node."""
        return self.per_node % math.prod(mesh_shape[axis:]) == 0

    def link(self, mesh_shape: Sequence[int], axis: int) -> Link:
        """NVLink for an axis inside a node; for one that crosses nodes, wholly or in part, the slower link."""
        if self.inside_node(mesh_shape, axis):
            return self.intra
        return (max(self.intra[0], self.inter[0]), max(self.intra[1], self.inter[1]))

    def refit(self, mesh_shape: Sequence[int], alpha: Sequence[float], beta: Sequence[float]) -> Topology:
        """This topology with the links measured on ``mesh_shape``'s axes: an axis inside a node gives ``intra``, one
        whose groups have each device on another node gives ``inter`` (an axis that mixes the two gives neither)."""
        links = {}
        for a in range(len(mesh_shape)):
            if self.inside_node(mesh_shape, a):
                links["intra"] = (alpha[a], beta[a])
            elif math.prod(mesh_shape[a + 1:]) % self.per_node == 0:
                links["inter"] = (alpha[a], beta[a])
        return replace(self, **links)

    def respects_nodes(self, mesh_shape: Sequence[int]) -> bool:
        """No axis cuts a node unevenly: each axis's span (with the axes after it) divides a node or is whole nodes."""
        spans = [math.prod(mesh_shape[a:]) for a in range(len(mesh_shape))]
        return all(self.per_node % s == 0 or s % self.per_node == 0 for s in spans)

    def meshes(self, max_ndim: int = 3) -> list[tuple[int, ...]]:
        """Every logical mesh of these devices with 1 to ``max_ndim`` axes of size >= 2 that respects the nodes,
        fewest axes first (a single device: ``[(1,)]``)."""
        world = self.world_size
        if world == 1:
            return [(1,)]
        found = [s for k in range(1, max_ndim + 1) for s in _factorisations(world, k) if self.respects_nodes(s)]
        return found


def _factorisations(n: int, k: int) -> list[tuple[int, ...]]:
    """Ordered ``k``-tuples of integers >= 2 whose product is ``n``."""
    if k == 1:
        return [(n,)] if n >= 2 else []
    return [(d, *rest) for d in range(2, n + 1) if n % d == 0 for rest in _factorisations(n // d, k - 1)]


@dataclass(frozen=True)
class ClusterInfo:
    mesh_shape: tuple[int, ...]
    memory_per_device: float
    peak_flops: float  # half precision (bf16/fp16) FLOP/s per device
    peak_flops_fp32: float  # fp32 matmul (tf32 where the device has it) FLOP/s per device
    mem_bandwidth: float  # bytes/s per device
    alpha: tuple[float, ...]  # s, latency of one collective on each mesh axis
    beta: tuple[float, ...]  # s/byte on each mesh axis
    device_type: str = "cuda"
    name: str = "custom"
    efficiency: float = 0.6  # fraction of peak FLOP/s and bandwidth a kernel reaches
    axis_names: tuple[str, ...] = field(default=())
    topology: Topology | None = None  # the physical layout, when known: what ``with_mesh`` prices axes by
    # (kind, alpha factor, beta factor) of the collectives that differ from an all-reduce (module docstring)
    collectives: tuple[tuple[str, float, float], ...] = ()
    # bytes/s between a device and its host's memory, each way (offload moves chunks over it: runtime/gemini)
    host_bandwidth: float = 25e9
    host_adam_time: float = HOST_ADAM_TIME  # s per element of one Adam/AdamW step on the host (offloaded state)

    def __post_init__(self) -> None:
        if isinstance(self.topology, dict):  # from JSON
            object.__setattr__(self, "topology", Topology(**self.topology))
        shape = tuple(self.mesh_shape)
        object.__setattr__(self, "mesh_shape", shape)
        object.__setattr__(self, "alpha", tuple(float(a) for a in self.alpha))
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
        object.__setattr__(self, "collectives", tuple((str(k), float(a), float(b)) for k, a, b in self.collectives))
        for kind, a, b in self.collectives:
            if kind not in KINDS or not (a > 0 and b > 0):
                raise ValueError(f"collectives: ({kind!r}, {a}, {b}) must name one of {', '.join(KINDS)} with "
                                 f"positive alpha and beta factors")
        if not 1 <= len(shape) <= 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"mesh_shape must be 1 to 3 positive ints, got {self.mesh_shape!r}")
        if len(self.alpha) != len(shape) or len(self.beta) != len(shape):
            raise ValueError(
                f"alpha and beta need one value per mesh axis ({len(shape)}), "
                f"got {len(self.alpha)} and {len(self.beta)}"
            )
        for label, value in [("memory_per_device", self.memory_per_device), ("peak_flops", self.peak_flops),
                             ("peak_flops_fp32", self.peak_flops_fp32), ("mem_bandwidth", self.mem_bandwidth),
                             ("host_bandwidth", self.host_bandwidth), ("host_adam_time", self.host_adam_time)]:
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{label} must be a positive number, got {value!r}")
        if any(a < 0 for a in self.alpha) or any(b < 0 for b in self.beta):
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.device_type not in ("cuda", "cpu"):
            raise ValueError(f"device_type must be 'cuda' or 'cpu', got {self.device_type!r}")
        if not self.axis_names:
            object.__setattr__(self, "axis_names", tuple(f"axis{i}" for i in range(len(shape))))
        if self.topology is not None and self.topology.world_size != math.prod(shape):
            t = self.topology
            raise ValueError(f"the topology has {t.nodes} x {t.per_node} = {t.world_size} devices but the mesh "
                             f"{'x'.join(map(str, shape))} has {math.prod(shape)}")

    # ---- presets ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ClusterInfo:
        """``"8xH100"``, ``"2x8xH100"`` (inter-node x intra-node), ``"cpu:4"``, ``"cpu:2x2"``, ...

        GPU presets: ``[A x] N x {H100, H100PCIe, H200, A100, RTX3090, RTX4090}``; the last mesh axis is
        inside a node (NVLink; PCIe for H100PCIe and the consumer cards), earlier axes cross nodes: ``8x8xH100``
        is 8 nodes of 8, ``8x8x8xH100`` 64 nodes of 8, ``1xRTX3090`` one consumer card. Each knows its host
        link (``host_bandwidth``: what offload pays, runtime/gemini).
        CPU presets: ``cpu:N`` or ``cpu:AxB``: gloo on loopback, one "node". Every preset knows its
        ``topology``, so ``with_mesh`` and ``mesh="search"`` can arrange its devices as any mesh.
        """
        text = name.strip()
        cpu = re.fullmatch(r"cpu:(\d+(?:x\d+){0,2})", text)
        if cpu:
            shape = tuple(int(n) for n in cpu.group(1).split("x"))
            a, b = _CPU["link"]
            return cls(shape, _CPU["memory"], _CPU["peak"], _CPU["peak32"], _CPU["bw"], (a,) * len(shape),
                       (b,) * len(shape), device_type="cpu", name=text,
                       topology=Topology(1, math.prod(shape), (a, b), (a, b)), host_bandwidth=_CPU["host"])
        gpu = re.fullmatch(rf"(\d+(?:x\d+){{0,2}})x({'|'.join(_DEVICES)})", text)
        if gpu:
            shape = tuple(int(n) for n in gpu.group(1).split("x"))
            mem, peak, peak32, bw, host = _DEVICES[gpu.group(2)]
            intra = _PCIE if gpu.group(2) in _PCIE_ONLY else _INTRA
            links = [_INTER] * (len(shape) - 1) + [intra]
            topology = Topology(math.prod(shape[:-1]), shape[-1], intra, _INTER)
            return cls(shape, mem, peak, peak32, bw, tuple(a for a, _ in links), tuple(b for _, b in links), name=text,
                       topology=topology, host_bandwidth=host)
        raise ValueError(
            f"unknown cluster preset {name!r}; use e.g. '8xH100', '2x8xH100', 'cpu:4', 'cpu:2x2' "
            f"(GPUs: {', '.join(_DEVICES)}), or build ClusterInfo(...) directly"
        )

    @classmethod
    def physical(cls, nodes: int, per_node: int, device: str = "H100", *, intra: Link = _INTRA,
                 inter: Link = _INTER, mesh_shape: Sequence[int] | None = None) -> ClusterInfo:
        """``nodes`` nodes of ``per_node`` GPUs (``device``: H100, H200, A100), NVLink ``intra`` and network ``inter``
        links as (alpha s, beta s/byte). The logical mesh defaults to (nodes, per_node) (one node: (per_node,)); plan
        with ``mesh="search"`` to let autopar choose it, or ``mesh=(...)`` / ``with_mesh`` to fix another."""
        if device not in _DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of {', '.join(_DEVICES)}")
        topology = Topology(nodes, per_node, intra, inter)
        mem, peak, peak32, bw, host = _DEVICES[device]
        default = (nodes, per_node) if nodes > 1 else (per_node,)
        name = f"{nodes}x{per_node}x{device}" if nodes > 1 else f"{per_node}x{device}"
        base = cls(default, mem, peak, peak32, bw, (inter[0], intra[0])[-len(default):],
                   (inter[1], intra[1])[-len(default):], name=name, topology=topology, host_bandwidth=host)
        return base.with_mesh(mesh_shape) if mesh_shape is not None else base

    def with_mesh(self, mesh_shape: Sequence[int], **changes) -> ClusterInfo:
        """The same devices arranged as another mesh. With a ``topology``, each axis gets the link its groups
        cross (``Topology.link``); without one, axes keep their own alpha/beta and new ones take the last's."""
        shape = tuple(mesh_shape)
        if self.topology is not None:
            if math.prod(shape) != self.world_size:
                raise ValueError(f"a mesh {'x'.join(map(str, shape))} has {math.prod(shape)} devices, the cluster "
                                 f"{self.name} has {self.world_size}")
            links = [self.topology.link(shape, a) for a in range(len(shape))]
            return replace(self, mesh_shape=shape, alpha=tuple(a for a, _ in links), beta=tuple(b for _, b in links),
                           axis_names=(), **changes)
        pad = len(shape) - len(self.alpha)
        alpha = (self.alpha + (self.alpha[-1],) * pad)[-len(shape):] if pad > 0 else self.alpha[-len(shape):]
        beta = (self.beta + (self.beta[-1],) * pad)[-len(shape):] if pad > 0 else self.beta[-len(shape):]
        return replace(self, mesh_shape=shape, alpha=alpha, beta=beta, axis_names=(), **changes)

    def profile(self, mesh=None, **kwargs) -> ClusterInfo:
        """This cluster with alpha and beta measured on the live process group, per mesh axis
        (``autopar.runtime.profile_links``), and its topology's links refitted to them (``Topology.refit``), so
        ``with_mesh`` and ``mesh="search"`` price other meshes by what was measured; collective: call it on
        every rank."""
        from autopar.runtime.profile_links import profile_links

        measured = profile_links(self, mesh, **kwargs)
        if self.topology is None:
            return measured
        return replace(measured, topology=self.topology.refit(self.mesh_shape, measured.alpha, measured.beta))

    def link(self, axis: int, kind: str = "all_reduce") -> tuple[float, float]:
        """(alpha s, beta s/byte on the wire) of one ``kind`` collective on mesh ``axis``."""
        for name, a, b in self.collectives:
            if name == kind:
                return self.alpha[axis] * a, self.beta[axis] * b
        return self.alpha[axis], self.beta[axis]

    # ---- mesh geometry ----------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.mesh_shape)

    @property
    def world_size(self) -> int:
        return math.prod(self.mesh_shape)

    def coord(self, rank: int) -> tuple[int, ...]:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a mesh of {self.world_size} devices {self.mesh_shape}")
        out = []
        for n in reversed(self.mesh_shape):
            out.append(rank % n)
            rank //= n
        return tuple(reversed(out))

    def rank_of(self, coord: Sequence[int]) -> int:
        rank = 0
        for c, n in zip(coord, self.mesh_shape):
            rank = rank * n + c
        return rank

    def axis_groups(self, axis: int) -> list[list[int]]:
        """The ranks that differ only in ``axis``: one list per communication group on that axis."""
        others = [range(n) if a != axis else range(1) for a, n in enumerate(self.mesh_shape)]
        groups = []
        for base in itertools.product(*others):
            groups.append([self.rank_of(base[:axis] + (i,) + base[axis + 1:]) for i in range(self.mesh_shape[axis])])
        return groups

    def flops_for(self, dtype) -> float:
        import torch

        return self.peak_flops if dtype in (torch.float16, torch.bfloat16) else self.peak_flops_fp32

    def describe(self) -> str:
        mesh = "x".join(map(str, self.mesh_shape))
        links = ", ".join(f"{a * 1e6:.0f} us + {1 / b / 1e9:.3g} GB/s" for a, b in zip(self.alpha, self.beta))
        kinds = "".join(f"; {kind.replace('_', '-')} x{a:.2g} latency, x{b:.2g} per byte"
                        for kind, a, b in self.collectives)
        return (f"{self.name}: mesh {mesh} ({self.world_size} {self.device_type} devices), "
                f"{self.memory_per_device / GiB:.1f} GiB each, {self.peak_flops / 1e12:.0f} TFLOP/s half, "
                f"{self.mem_bandwidth / 1e9:.0f} GB/s, host link {self.host_bandwidth / 1e9:.3g} GB/s; "
                f"all-reduce links per axis {links}{kinds}")
