"""ClusterInfo: the devices, their logical mesh, and the numbers the cost model needs.

All quantities are SI: bytes, seconds, FLOP/s, bytes/s. A collective on mesh axis ``a``
costs ``alpha[a] + beta[a] * bytes_on_the_wire`` (ring factors are applied by the cost
model). Ranks map to mesh coordinates in row-major order: on a (2, 4) mesh rank 5 is (1, 1).
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

GiB = 1024**3

# name -> (memory bytes, peak half-precision FLOP/s, peak fp32 (tf32) FLOP/s, HBM bytes/s)
_DEVICES = {
    "H100": (80 * GiB, 989e12, 494e12, 3.35e12),
    "H200": (141 * GiB, 989e12, 494e12, 4.8e12),
    "A100": (80 * GiB, 312e12, 156e12, 2.0e12),
}
# (alpha s, beta s/byte) for links: inside a node (NVLink), across nodes (400 Gb/s per GPU)
_INTRA = (1e-5, 1 / 360e9)
_INTER = (2e-5, 1 / 45e9)
# A CPU "device" under gloo on loopback.
_CPU = dict(memory=4 * GiB, peak=2e11, peak32=1e11, bw=2e10, link=(5e-5, 1 / 2e9))


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

    def __post_init__(self) -> None:
        shape = tuple(self.mesh_shape)
        object.__setattr__(self, "mesh_shape", shape)
        object.__setattr__(self, "alpha", tuple(float(a) for a in self.alpha))
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
        if not 1 <= len(shape) <= 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"mesh_shape must be 1 to 3 positive ints, got {self.mesh_shape!r}")
        if len(self.alpha) != len(shape) or len(self.beta) != len(shape):
            raise ValueError(
                f"alpha and beta need one value per mesh axis ({len(shape)}), "
                f"got {len(self.alpha)} and {len(self.beta)}"
            )
        for label, value in [("memory_per_device", self.memory_per_device), ("peak_flops", self.peak_flops),
                             ("peak_flops_fp32", self.peak_flops_fp32), ("mem_bandwidth", self.mem_bandwidth)]:
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

    # ---- presets ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ClusterInfo:
        """``"8xH100"``, ``"2x8xH100"`` (inter-node x intra-node), ``"cpu:4"``, ``"cpu:2x2"``, ...

        GPU presets: ``[A x] N x {H100, H200, A100}``; the last mesh axis is inside a node
        (NVLink), earlier axes cross nodes. CPU presets: ``cpu:N`` or ``cpu:AxB``: gloo on loopback.
        """
        text = name.strip()
        cpu = re.fullmatch(r"cpu:(\d+(?:x\d+){0,2})", text)
        if cpu:
            shape = tuple(int(n) for n in cpu.group(1).split("x"))
            a, b = _CPU["link"]
            return cls(shape, _CPU["memory"], _CPU["peak"], _CPU["peak32"], _CPU["bw"], (a,) * len(shape),
                       (b,) * len(shape), device_type="cpu", name=text)
        gpu = re.fullmatch(r"(\d+(?:x\d+){0,2})x(H100|H200|A100)", text)
        if gpu:
            shape = tuple(int(n) for n in gpu.group(1).split("x"))
            mem, peak, peak32, bw = _DEVICES[gpu.group(2)]
            links = [_INTER] * (len(shape) - 1) + [_INTRA]
            return cls(shape, mem, peak, peak32, bw, tuple(a for a, _ in links), tuple(b for _, b in links), name=text)
        raise ValueError(
            f"unknown cluster preset {name!r}; use e.g. '8xH100', '2x8xH100', 'cpu:4', 'cpu:2x2' "
            f"(GPUs: {', '.join(_DEVICES)}), or build ClusterInfo(...) directly"
        )

    def with_mesh(self, mesh_shape: Sequence[int], **changes) -> ClusterInfo:
        """The same devices arranged as another mesh (links: axes keep their own alpha/beta, new ones the last's)."""
        shape = tuple(mesh_shape)
        pad = len(shape) - len(self.alpha)
        alpha = (self.alpha + (self.alpha[-1],) * pad)[-len(shape):] if pad > 0 else self.alpha[-len(shape):]
        beta = (self.beta + (self.beta[-1],) * pad)[-len(shape):] if pad > 0 else self.beta[-len(shape):]
        return replace(self, mesh_shape=shape, alpha=alpha, beta=beta, axis_names=(), **changes)

    def profile(self, mesh=None, **kwargs) -> ClusterInfo:
        """This cluster with alpha and beta measured on the live process group, per mesh axis
        (``autopar.runtime.profile_links``); collective: call it on every rank."""
        from autopar.runtime.profile_links import profile_links

        return profile_links(self, mesh, **kwargs)

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
        return (f"{self.name}: mesh {mesh} ({self.world_size} {self.device_type} devices), "
                f"{self.memory_per_device / GiB:.1f} GiB each, {self.peak_flops / 1e12:.0f} TFLOP/s half, "
                f"{self.mem_bandwidth / 1e9:.0f} GB/s")
