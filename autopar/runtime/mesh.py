"""RuntimeMesh: this rank's place on the logical device mesh and its process group per mesh axis.

Built inside every rank after ``torch.distributed.init_process_group``. Ranks map to mesh
coordinates in row-major order (``ClusterInfo.coord``). Every rank creates every communication
group of every mesh axis, in the same order (``torch.distributed.new_group`` is collective over
the world), and keeps the one it belongs to on each axis. Within a group, the group rank of a
device equals its coordinate on that axis (the ranks of a group differ only in that axis, so
they ascend with it). A size-1 axis gets no group and no collective is ever issued on it.
Groups are made once per process group and set of ranks and reused by every later mesh (every
rank builds its meshes in the same order, so every rank skips the same ``new_group`` calls): each
gloo group starts threads of its own, and a process that calls ``autoparallelize`` once per model
(the fuzzer's worlds, a sweep) grew by about four threads a call, 1,230 after some 300 graphs.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from autopar.cluster import ClusterInfo
from autopar.errors import LaunchError

_GROUPS: dict[str, Any] = {"world": None, "groups": {}}  # the groups made under the current default group


def _group(ranks) -> Any:
    """The process group of ``ranks`` under the current default group: made on first use (collective: every
    rank asks for the same groups in the same order), then reused."""
    world = dist.group.WORLD
    if _GROUPS["world"] is not world:  # a new default group (init after destroy): the old groups are gone
        _GROUPS.update(world=world, groups={})
    key = tuple(ranks)
    if key not in _GROUPS["groups"]:
        _GROUPS["groups"][key] = dist.new_group(list(key))
    return _GROUPS["groups"][key]


class RuntimeMesh:
    """This rank's coordinate, process group per mesh axis, and device.

    ``RuntimeMesh(cluster)`` reads rank and world size from the default process group;
    ``device`` defaults to ``cuda:LOCAL_RANK`` on NCCL and ``cpu`` otherwise (gloo).
    """

    def __init__(self, cluster: ClusterInfo, rank: int | None = None, device: torch.device | str | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise LaunchError(
                "RuntimeMesh needs an initialised process group: call torch.distributed.init_process_group() "
                "in every rank first (launch with torchrun --nproc-per-node N)")
        self.cluster = cluster
        self.mesh_shape: tuple[int, ...] = tuple(cluster.mesh_shape)
        self.world_size: int = dist.get_world_size()
        if self.world_size != cluster.world_size:
            mesh = "x".join(map(str, self.mesh_shape))
            raise LaunchError(
                f"the process group has {self.world_size} ranks but the cluster's mesh {mesh} needs "
                f"{cluster.world_size}: launch with torchrun --nproc-per-node {cluster.world_size}, or change "
                f"the cluster's mesh to one of {self.world_size} devices "
                f"(e.g. cluster.with_mesh(({self.world_size},)))")
        self.rank: int = dist.get_rank() if rank is None else rank
        self.coord: tuple[int, ...] = cluster.coord(self.rank)
        self.backend: str = str(dist.get_backend())
        self.device = torch.device(device) if device is not None else self._default_device()
        self._groups: list[Any] = []
        for axis, n in enumerate(self.mesh_shape):
            mine = None
            if n > 1:
                for ranks in cluster.axis_groups(axis):  # same order on every rank
                    group = dist.group.WORLD if n == self.world_size else _group(ranks)
                    if self.rank in ranks:
                        mine = group
            self._groups.append(mine)

    def _default_device(self) -> torch.device:
        if self.backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(), 1)))
            return torch.device("cuda", local)
        return torch.device("cpu")

    @property
    def ndim(self) -> int:
        return len(self.mesh_shape)

    def size(self, axis: int) -> int:
        """Number of ranks on mesh axis ``axis`` (the size of this rank's group on it)."""
        return self.mesh_shape[axis]

    def group(self, axis: int):
        """This rank's process group on ``axis`` (None on a size-1 axis, where nothing is communicated)."""
        if not 0 <= axis < len(self.mesh_shape):
            raise ValueError(f"mesh axis {axis} does not exist on a {len(self.mesh_shape)}-d mesh {self.mesh_shape}")
        return self._groups[axis]

    def __repr__(self) -> str:
        mesh = "x".join(map(str, self.mesh_shape))
        return (f"RuntimeMesh(mesh={mesh}, rank={self.rank}, coord={self.coord}, backend={self.backend}, "
                f"device={self.device})")
