"""Measure the links of a live cluster: alpha (seconds per collective) and beta (seconds per byte) per mesh axis,
and how each kind of collective differs from an all-reduce.

    torch.distributed.init_process_group("gloo")
    cluster = autopar.ClusterInfo.preset("cpu:2").profile()      # collective: call it on every rank
    model = autopar.autoparallelize(model, cluster, inputs)       # planned with the measured links

On each mesh axis of size n > 1, collectives of each kind (all-reduce, all-gather, reduce-scatter,
all-to-all) and of growing size run on this rank's group of that axis (a barrier before each, in
rounds of every kind and size, median of ``repeats`` rounds after a warm-up one, the slowest rank's
time), and ``t = alpha + beta x bytes_on_the_wire`` is fitted per kind, bytes on the wire being the
factors the cost model applies: the ring's ``2 (n-1)/n x size`` for an all-reduce, ``(n-1)/n x size``
for the others (size: the larger side). The fit minimises the sum of absolute relative errors
(``fit``): latency-bound small collectives and bandwidth-bound large ones are predicted alike, and a
few sizes a slow spell lifted move it little. The all-reduce's fit is the axis's ``alpha`` and
``beta``; every other kind's ratio to it (the geometric mean over the axes) goes in
``ClusterInfo.collectives``. Rank 0's numbers are broadcast so every rank plans with the same.
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


def profile_links(cluster, mesh=None, *, sizes=SIZES, repeats: int = 9):
    """``cluster`` with alpha, beta and the collectives' factors measured on the live process group (module
    docstring)."""
    from autopar.runtime.mesh import RuntimeMesh

    mesh = mesh if mesh is not None else RuntimeMesh(cluster)
    alpha, beta = list(cluster.alpha), list(cluster.beta)
    ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS[1:]}
    for axis, n in enumerate(cluster.mesh_shape):
        if n < 2:
            continue
        times = _times(n, mesh.group(axis), mesh.device, sizes, repeats)
        fits = {}
        for kind in KINDS:
            # bytes on the wire per byte of this rank's input: the ring's 2 (n-1)/n of it for an all-reduce,
            # (n-1)/n of the n-times larger side for the others
            wire = 2 * (n - 1) / n if kind == "all_reduce" else n - 1
            fits[kind] = fit([wire * size for size in sizes], [times[kind, size] for size in sizes])
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
    """(alpha, beta) of ``t = alpha + beta x bytes`` with the least sum of *absolute relative* errors, alpha and
    beta kept positive.

    Relative: latency-bound small collectives and bandwidth-bound large ones weigh alike (a plain least-squares
    fit lets the largest sizes fix alpha). Absolute, not squared: a size whose median a slow spell of the
    machine lifted 3-7x (seen here: 3.6 ms medians for a 0.5 ms all-reduce, several sizes in a row) moves the
    line little, where it pulled a least-squares one by its whole error. The optimum of such an L1 fit passes
    through two of the points, so every line through two (and every flat line through one) is tried.
    """
    t = np.asarray(seconds, dtype=np.float64)
    x = np.asarray(wire_bytes, dtype=np.float64)
    floor = float(t.min()) * 1e-3
    candidates = [(float(ti), 1e-15) for ti in t]
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            if x[i] != x[j]:
                b = (t[j] - t[i]) / (x[j] - x[i])
                candidates.append((float(t[i] - b * x[i]), float(b)))
    best = min(((max(a, floor), max(b, 1e-15)) for a, b in candidates),
               key=lambda ab: float(np.abs(1.0 - (ab[0] + ab[1] * x) / t).sum()))
    return best


def _geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _times(n: int, group, device, sizes: tuple[int, ...], repeats: int) -> dict[tuple[str, int], float]:
    """``{(kind, size): seconds}``: the median of ``repeats`` runs of one collective on ``group`` whose per-rank
    input is ``size`` bytes (float32; a reduce-scatter's: its output), the slowest rank's. The runs go in
    rounds (every kind and size once a round, a warm-up round first), so a slow spell of the machine, which
    lasts longer than one collective, falls on every size alike instead of on one size's every sample."""
    inputs = {}
    for size in sizes:
        x = torch.ones(max(size // 4, 1), device=device)
        inputs[size] = (x, torch.empty(x.numel() * n, device=device))
    samples: dict[tuple[str, int], list[float]] = {(k, s): [] for k in KINDS for s in sizes}
    # one kind's sizes up, the next one's down, and every other round backwards: a collective follows one of
    # about its size (a 1 KiB all-reduce right after a 16 MiB all-to-all took 4 ms here where it takes 0.5)
    order = [(kind, size) for j, kind in enumerate(KINDS) for size in (sizes if j % 2 == 0 else sizes[::-1])]
    for i in range(repeats + 1):
        for kind, size in (order if i % 2 == 0 else order[::-1]):
            x, whole = inputs[size]
            dist.barrier(group=group)
            t0 = time.perf_counter()
            _run(kind, x, whole, group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                samples[kind, size].append(time.perf_counter() - t0)
    keys = list(samples)
    worst = torch.tensor([statistics.median(samples[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return dict(zip(keys, worst.tolist()))


def _run(kind: str, x, whole, group) -> None:
    if kind == "all_reduce":
        dist.all_reduce(x, group=group)
    elif kind == "all_gather":
        _all_gather_tensor(whole, x, group=group)
    elif kind == "reduce_scatter":
        _reduce_scatter_tensor(x, whole, group=group)
    else:
        dist.all_to_all_single(whole, whole.clone(), group=group)
