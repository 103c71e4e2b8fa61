"""Measure the links of a live cluster: alpha (seconds per collective) and beta (seconds per byte) per mesh axis,
and how each kind of collective differs from an all-reduce.

    torch.distributed.init_process_group("gloo")
    cluster = autopar.ClusterInfo.preset("cpu:2").profile()      # collective: call it on every rank
    model = autopar.autoparallelize(model, cluster, inputs)       # planned with the measured links

On each mesh axis of size n > 1, collectives of each kind (all-reduce, all-gather, reduce-scatter,
all-to-all) and of growing size run on this rank's group of that axis (a barrier before each, median
of ``repeats`` after a warm-up, the slowest rank's time), and ``t = alpha + beta x bytes_on_the_wire``
is fitted per kind, bytes on the wire being the factors the cost model applies: the ring's
``2 (n-1)/n x size`` for an all-reduce, ``(n-1)/n x size`` for the others (size: the larger side).
The fit minimises the relative error (each row divided by its time): latency-bound small collectives
and bandwidth-bound large ones are predicted alike, where a plain least-squares fit lets the largest
sizes fix alpha. The all-reduce's fit is the axis's ``alpha`` and ``beta``; every other kind's ratio to
it (the geometric mean over the axes) goes in ``ClusterInfo.collectives``. Rank 0's numbers are
broadcast so every rank plans with the same.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from autopar.cluster import KINDS
from autopar.runtime.collectives import _all_gather_tensor, _reduce_scatter_tensor

SIZES = tuple(2**k for k in range(10, 25, 2))  # 1 KiB .. 16 MiB per rank (the default bucket is 25 MB)


def profile_links(cluster, mesh=None, *, sizes=SIZES, repeats: int = 7):
    """``cluster`` with alpha, beta and the collectives' factors measured on the live process group (module
    docstring)."""
    from autopar.runtime.mesh import RuntimeMesh

    mesh = mesh if mesh is not None else RuntimeMesh(cluster)
    alpha, beta = list(cluster.alpha), list(cluster.beta)
    ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS[1:]}
    for axis, n in enumerate(cluster.mesh_shape):
        if n < 2:
            continue
        group = mesh.group(axis)
        fits = {}
        for kind in KINDS:
            # bytes on the wire per byte of this rank's input: the ring's 2 (n-1)/n of it for an all-reduce,
            # (n-1)/n of the n-times larger side for the others
            wire = 2 * (n - 1) / n if kind == "all_reduce" else n - 1
            times = [_time(kind, size, n, group, mesh.device, repeats) for size in sizes]
            fits[kind] = fit([wire * size for size in sizes], times)
        alpha[axis], beta[axis] = fits["all_reduce"]
        for kind in KINDS[1:]:
            ratios[kind].append((fits[kind][0] / alpha[axis], fits[kind][1] / beta[axis]))
    factors = [(k, _geomean([a for a, _ in r]), _geomean([b for _, b in r])) for k, r in ratios.items() if r]
    numbers = torch.tensor(alpha + beta + [x for _k, a, b in factors for x in (a, b)], dtype=torch.float64)
    dist.broadcast(numbers, src=0)
    values, k = numbers.tolist(), len(alpha)
    factors = [(kind, values[2 * k + 2 * i], values[2 * k + 2 * i + 1]) for i, (kind, _a, _b) in enumerate(factors)]
    return replace(cluster, alpha=tuple(values[:k]), beta=tuple(values[k:2 * k]),
                   collectives=tuple(f for f in factors if f[1:] != (1.0, 1.0)), name=f"{cluster.name} (profiled)")


def fit(wire_bytes, seconds) -> tuple[float, float]:
    """(alpha, beta) of ``t = alpha + beta x bytes`` with the least relative error, alpha and beta kept positive."""
    t = np.asarray(seconds, dtype=np.float64)
    rows = np.stack([np.ones_like(t), np.asarray(wire_bytes, dtype=np.float64)], axis=1) / t[:, None]
    (a, b), *_ = np.linalg.lstsq(rows, np.ones_like(t), rcond=None)
    floor = float(t.min()) * 1e-3
    return max(float(a), floor), max(float(b), 1e-15)


def _geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _time(kind: str, size: int, n: int, group, device, repeats: int) -> float:
    """Median seconds of one collective on ``group`` whose per-rank input is ``size`` bytes (float32; a
    reduce-scatter's: its output), the slowest rank's."""
    x = torch.ones(max(size // 4, 1), device=device)
    whole = torch.empty(x.numel() * n, device=device)
    samples = []
    for i in range(repeats + 1):
        dist.barrier(group=group)
        t0 = time.perf_counter()
        if kind == "all_reduce":
            dist.all_reduce(x, group=group)
        elif kind == "all_gather":
            _all_gather_tensor(whole, x, group=group)
        elif kind == "reduce_scatter":
            _reduce_scatter_tensor(x, whole, group=group)
        else:
            dist.all_to_all_single(whole, whole.clone(), group=group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first is a warm-up
            samples.append(time.perf_counter() - t0)
    worst = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst)
