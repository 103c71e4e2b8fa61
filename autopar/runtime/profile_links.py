"""Measure the links of a live cluster: alpha (seconds per collective) and beta (seconds per byte) per mesh axis.

    torch.distributed.init_process_group("gloo")
    cluster = autopar.ClusterInfo.preset("cpu:2").profile()      # collective: call it on every rank
    model = autopar.autoparallelize(model, cluster, inputs)       # planned with the measured links

On each mesh axis of size n > 1, all-reduces and all-gathers of growing size run on this rank's
group of that axis (a barrier before each, median of ``repeats`` after a warm-up, the slowest rank's
time), and ``t = alpha + beta x bytes_on_the_wire`` is fitted by least squares, bytes on the wire
being the ring's ``2 (n-1)/n x size`` for an all-reduce and ``(n-1)/n x size`` for an all-gather, the
factors the cost model applies. Rank 0's fit is broadcast so every rank plans with the same numbers.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

SIZES = tuple(2**k for k in range(10, 23, 2))  # 1 KiB .. 4 MiB


def profile_links(cluster, mesh=None, *, sizes=SIZES, repeats: int = 5):
    """``cluster`` with alpha and beta measured on the live process group (module docstring)."""
    from autopar.runtime.mesh import RuntimeMesh

    mesh = mesh if mesh is not None else RuntimeMesh(cluster)
    alpha, beta = list(cluster.alpha), list(cluster.beta)
    for axis, n in enumerate(cluster.mesh_shape):
        if n < 2:
            continue
        group = mesh.group(axis)
        rows, times = [], []
        for size in sizes:
            for kind, factor in (("all_reduce", 2 * (n - 1) / n), ("all_gather", (n - 1) / n)):
                seconds = _time(kind, size, n, group, mesh.device, repeats)
                rows.append((1.0, factor * size))
                times.append(seconds)
        (a, b), *_ = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)
        alpha[axis], beta[axis] = max(float(a), 0.0), max(float(b), 1e-15)
    fit = torch.tensor(alpha + beta, dtype=torch.float64)
    dist.broadcast(fit, src=0)
    values = fit.tolist()
    k = len(alpha)
    return replace(cluster, alpha=tuple(values[:k]), beta=tuple(values[k:]), name=f"{cluster.name} (profiled)")


def _time(kind: str, size: int, n: int, group, device, repeats: int) -> float:
    """Median seconds of one collective of ``size`` bytes (float32) on ``group``, the slowest rank's."""
    x = torch.ones(max(size // 4, 1), device=device)
    out = torch.empty(x.numel() * n, device=device)
    samples = []
    for i in range(repeats + 1):
        dist.barrier(group=group)
        t0 = time.perf_counter()
        if kind == "all_reduce":
            dist.all_reduce(x, group=group)
        else:
            dist.all_gather_into_tensor(out, x, group=group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first is a warm-up
            samples.append(time.perf_counter() - t0)
    worst = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst)
