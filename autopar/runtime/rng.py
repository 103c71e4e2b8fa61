"""Randomness on the mesh: every random op draws from a seed of its own, so a run is reproducible and
masks follow the data's layout.

A random op (dropout, attention dropout, ``rand``/``randn``, ...: ``Prop.RANDOM`` in tracer/ops.py)
runs under ``torch.random.fork_rng`` seeded with a hash of

    (seed, step, the op's position in the traced graph, the shard of its output this rank holds)

where ``step`` counts the module's forward calls and the shard is the piece index on every split
dim of the output's spec. So ranks holding replicas of one activation draw the same mask, ranks
holding different shards draw independent masks, the global RNG is untouched, and a recomputed
checkpoint region (same step) draws the same mask again. What "the same numbers as one device"
means with dropout: the parallel run's masks are not the single-device run's (it draws them per
shard); two runs with the same seed and plan give identical results, and each element is dropped
with probability p independently, as on one device.
"""
from __future__ import annotations

import hashlib

import torch
import torch.fx as fx

from autopar.tracer.ops import Prop, has


def draws_random(node: fx.Node) -> bool:
    """Whether ``node`` draws random numbers when it runs (canonical dropout ``(x, p, training)`` only when
    active; attention only with ``dropout_p``)."""
    op = node.meta.get("op") or getattr(node.target, "__name__", "")
    if op == "dropout":
        return len(node.args) < 3 or bool(node.args[1] and node.args[2])
    if op == "sdpa":
        return bool(node.kwargs.get("dropout_p"))
    return has(op, Prop.RANDOM)


class StepCounter:
    """The number of forward calls of one module (a forward pre-hook counts them)."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, _module, _args) -> None:
        self.step += 1


def derived_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SeededRandom(torch.nn.Module):
    """Runs one random op (``target(*args, **kwargs)``) under its own seed (module docstring)."""

    def __init__(self, target, seed: int, position: int, shard: tuple[int, ...], counter: StepCounter,
                 device) -> None:
        super().__init__()
        self.target, self.seed, self.position, self.shard = target, seed, position, shard
        self.counter, self.device = counter, torch.device(device)

    def forward(self, *args, **kwargs):
        fork = (torch.random.fork_rng(devices=[self.device], device_type="cuda") if self.device.type == "cuda"
                else torch.random.fork_rng(devices=[]))
        with fork:
            torch.manual_seed(derived_seed(self.seed, self.counter.step, self.position, self.shard))
            return self.target(*args, **kwargs)
