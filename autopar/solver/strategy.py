"""Strategy: one way to run one node on the mesh, and what it costs.

``inputs`` has one entry per ``node.all_input_nodes`` (fx de-duplicates them, in first-use
order): the spec that input must arrive in; ``None`` where the input is not a tensor.
``output`` is the spec of the node's output (of each tensor, for tuple outputs).
All communication between nodes is on edges (resharding, priced by the shape consistency
manager); ``comm_time`` is what a node pays by itself, e.g. a parameter's gradient all-reduce.
Printed as the report's language: ``S0S1 = S0R x RS1``.
"""
from __future__ import annotations

from dataclasses import dataclass

from autopar.spec import ShardingSpec


@dataclass(frozen=True, slots=True)
class Strategy:
    output: ShardingSpec
    inputs: tuple[ShardingSpec | None, ...] = ()
    compute_time: float = 0.0  # s: forward + backward of the local shard
    comm_time: float = 0.0  # s: collectives the node pays itself (not resharding of its inputs)
    memory: float = 0.0  # bytes per device this node keeps (parameter state, or activations saved)

    def __str__(self) -> str:
        ins = [str(s) for s in self.inputs if s is not None]
        return f"{self.output} = {' x '.join(ins)}" if ins else str(self.output)

    @property
    def key(self) -> tuple:
        """Identity ignoring costs: two strategies with the same specs are the same choice."""
        return (self.output, self.inputs)
