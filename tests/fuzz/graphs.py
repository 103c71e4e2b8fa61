"""Random graphs for the fuzzer: seeded, reproducible, printable.

    graph = random_graph(17)            # the same Graph for the same seed, on any machine
    model, inputs = build(graph)        # an nn.Module whose forward runs the steps, and its example inputs
    print(describe(graph))              # what it computes, one line per step

A ``Graph`` is plain data: its inputs, submodules (kind and constructor arguments), steps (an op of
``menu.APPLY`` on earlier values), the blocks the steps are grouped in (``blocks.0``, ...: modules a
user could name for checkpointing), the values summed into the loss, and how it is planned: the
mesh, the budget (a fraction of the way from the smallest feasible budget to the unconstrained
peak, or None), the ``checkpoint`` option, and the dtype. Every graph runs forward and backward
eagerly before it is returned (the generator retries with the next draw of the same seed if not).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from tests.fuzz.menu import APPLY, SIZES, make_module

MESHES = ((2,), (4,), (2, 2))
MAX_NUMEL = 1536  # elements per value: tiny graphs, quick to plan and to run on gloo


@dataclass(frozen=True)
class Value:
    shape: tuple[int, ...]
    kind: str  # "f" float, "s" float scalar (a loss term), "i" integer ids below ``vocab``, "b" bool mask
    ties: bool = False  # may hold equal elements (see menu.py)
    vocab: int = 0

    def describe(self) -> str:
        what = {"f": "", "s": "scalar ", "i": f"ids<{self.vocab} ", "b": "mask "}[self.kind]
        return f"{what}{self.shape}"


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    kind: str
    args: tuple

    def describe(self) -> str:
        args = [f"<{len(a)} values>" if isinstance(a, tuple) and len(a) > 8 else repr(a) for a in self.args]
        return f"{self.kind}({', '.join(args)})"


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[int, ...]  # indices of earlier values (inputs first)
    params: tuple[tuple[str, object], ...]
    module: str | None  # the submodule it calls (mods.<name>)
    value: Value  # what it produces


@dataclass(frozen=True)
class Graph:
    seed: int
    inputs: tuple[Value, ...]
    modules: tuple[ModuleSpec, ...]
    steps: tuple[Step, ...]
    blocks: tuple[int, ...]  # the index of each block's first step
    loss: tuple[int, ...]  # values summed into the loss (tensors as mean of squares, scalars as they are)
    mesh: tuple[int, ...]
    budget: float | None  # 0: the smallest feasible budget, 1: the unconstrained plan's peak; None: no budget
    checkpoint: str | tuple[str, ...] | None
    dtype: str

    @property
    def values(self) -> list[Value]:
        return [*self.inputs, *(s.value for s in self.steps)]

    @property
    def cluster(self) -> str:
        return "cpu:" + "x".join(map(str, self.mesh))


# ---- running a graph ---------------------------------------------------------------------------------------
class Block(nn.Module):
    """Runs its steps in order, appending each output to ``vals`` (so later blocks read them)."""

    def __init__(self, steps: tuple[Step, ...]) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, mods: nn.ModuleDict, vals: list) -> None:
        for s in self.steps:
            vals.append(APPLY[s.op](mods[s.module] if s.module else None, *(vals[i] for i in s.args), **dict(s.params)))


class FuzzModule(nn.Module):
    """``graph`` as a module: ``forward(*inputs)`` runs every block and returns the scalar loss."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.loss_terms = graph.loss
        self.mods = nn.ModuleDict({m.name: make_module(m.kind, m.args) for m in graph.modules})
        bounds = [*graph.blocks, len(graph.steps)]
        self.blocks = nn.ModuleList(Block(graph.steps[a:b]) for a, b in zip(bounds, bounds[1:]))

    def forward(self, *inputs):
        vals = list(inputs)
        for block in self.blocks:
            block(self.mods, vals)
        terms = [vals[i] if vals[i].dim() == 0 else vals[i].square().mean() for i in self.loss_terms]
        return sum(terms[1:], terms[0])


def build(graph: Graph) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The module (parameters drawn from the graph's seed) and its example inputs: the same on every rank."""
    dtype = getattr(torch, graph.dtype)
    with torch.random.fork_rng():
        torch.manual_seed(graph.seed)
        model = FuzzModule(graph).to(dtype)
        inputs = tuple(_example(v, dtype) for v in graph.inputs)
    return model, inputs


def _example(v: Value, dtype) -> torch.Tensor:
    if v.kind == "i":
        return torch.randint(0, v.vocab, v.shape)
    return torch.randn(v.shape, dtype=dtype)


# ---- drawing a graph ---------------------------------------------------------------------------------------
class Builder:
    """The graph drawn so far, with example tensors of every value (each step is run as it is added)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.vals: list[Value] = []
        self.examples: list[torch.Tensor] = []
        self.modules: dict[str, tuple[ModuleSpec, nn.Module]] = {}
        self.steps: list[Step] = []

    def size(self, lo: int = 2) -> int:
        return self.rng.choice([s for s in SIZES if s >= lo])

    def pick(self, pred=lambda v: v.kind == "f", exclude=()) -> int | None:
        """A random value satisfying ``pred``, recent ones likelier (graphs grow deep as well as wide)."""
        found = [i for i, v in enumerate(self.vals) if pred(v) and i not in exclude]
        if not found:
            return None
        return self.rng.choices(found, weights=[1 + k for k in range(len(found))])[0]

    def find_module(self, pred) -> str | None:
        found = [spec.name for spec, _ in self.modules.values() if pred(spec)]
        return self.rng.choice(found) if found else None

    def input(self, value: Value, example: torch.Tensor) -> None:
        self.vals.append(value)
        self.examples.append(example)

    def add(self, op: str, args, module=None, ties: bool | None = None, vocab: int = 0, **params) -> bool:
        """Run ``op`` on the examples; keep it as a step if it runs and its output is small enough.

        ``module``: the name of an existing submodule (reuse) or ``(kind, args)`` for a new one.
        ``ties``: whether the output may hold equal elements (default: whether any input may)."""
        spec = None
        if isinstance(module, tuple):
            spec = ModuleSpec(f"m{len(self.modules)}", module[0], tuple(module[1]))
            try:
                mod = make_module(spec.kind, spec.args).double()
            except Exception:  # noqa: BLE001 - a constructor refusing its arguments: draw again
                return False
        elif module is not None:
            mod = self.modules[module][1]
        else:
            mod = None
        try:
            out = APPLY[op](mod, *(self.examples[i] for i in args), **params)
        except Exception:  # noqa: BLE001 - an op refusing its inputs: draw again
            return False
        if not isinstance(out, torch.Tensor) or out.numel() == 0 or out.numel() > MAX_NUMEL:
            return False
        if out.is_floating_point() and not torch.isfinite(out).all():
            return False
        if out.dtype == torch.bool:
            kind = "b"
        elif not out.is_floating_point():
            kind, vocab = "i", vocab or int(out.max()) + 1
        else:
            kind = "f" if out.dim() else "s"
        if ties is None:
            ties = any(self.vals[i].ties for i in args)
        name = module if isinstance(module, str) else None
        if spec is not None:
            self.modules[spec.name] = (spec, mod)
            name = spec.name
        value = Value(tuple(out.shape), kind, ties, vocab)
        self.steps.append(Step(op, tuple(args), tuple(params.items()), name, value))
        self.vals.append(value)
        self.examples.append(out.detach())
        return True


def random_graph(seed: int, max_steps: int = 24) -> Graph:
    """The graph of ``seed``: the first draw of ``random.Random(f"{seed}:{attempt}")`` that runs eagerly."""
    for attempt in range(20):
        graph = _draw(seed, random.Random(f"{seed}:{attempt}"), max_steps)
        if graph is not None and _runs(graph):
            return graph
    raise RuntimeError(f"seed {seed}: no graph that runs eagerly in 20 draws")


def _draw(seed: int, rng: random.Random, max_steps: int) -> Graph | None:
    from tests.fuzz.choose import BUILDERS, draw_inputs

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        b = Builder(rng)
        draw_inputs(b)
        n_inputs = len(b.vals)
        target = rng.randint(3, max_steps)
        names, weights = zip(*[(name, w) for name, (w, _fn) in BUILDERS.items()])
        for _ in range(30 * target):
            if len(b.steps) >= target:
                break
            BUILDERS[rng.choices(names, weights=weights)[0]][1](b)
    if not b.steps:
        return None
    used = {i for s in b.steps for i in s.args}
    floats = [i for i, v in enumerate(b.vals) if v.kind in "fs" and i >= n_inputs]
    if not floats:
        return None
    loss = [i for i in floats if i not in used] or [floats[-1]]
    if rng.random() < 0.3:
        loss.append(rng.choice(floats))
    n_blocks = min(len(b.steps), rng.randint(1, 3))
    blocks = (0, *sorted(rng.sample(range(1, len(b.steps)), n_blocks - 1)))
    budget = rng.random() if rng.random() < 0.5 else None
    checkpoint = rng.choices([None, "none", "auto", "blocks"], weights=[50, 20, 15, 15])[0]
    if checkpoint == "blocks":  # a block some step of which reaches the loss (dead code is traced away)
        live, ends = _live_steps(b.steps, n_inputs, loss), (*blocks[1:], len(b.steps))
        has_live = [any(k in live for k in range(lo, hi)) for lo, hi in zip(blocks, ends)]
        pick = rng.randrange(n_blocks)
        checkpoint = (f"blocks.{pick if has_live[pick] else has_live.index(True)}",)
    return Graph(seed, tuple(b.vals[:n_inputs]), tuple(spec for spec, _ in b.modules.values()), tuple(b.steps),
                 blocks, tuple(dict.fromkeys(loss)), rng.choice(MESHES), budget, checkpoint,
                 rng.choice(["float64", "float64", "float64", "float32"]))


def _live_steps(steps, n_inputs: int, loss) -> set[int]:
    """The indices of the steps whose values the loss reads, directly or through later steps."""
    live, wanted = set(), set(loss)
    for k in range(len(steps) - 1, -1, -1):
        if n_inputs + k in wanted:
            live.add(k)
            wanted.update(steps[k].args)
    return live


def _runs(graph: Graph) -> bool:
    try:
        model, inputs = build(graph)
        loss = model(*inputs)
        loss.backward()
        return bool(torch.isfinite(loss))
    except Exception:  # noqa: BLE001 - e.g. an in-place write to a value saved for backward
        return False


# ---- printing a graph --------------------------------------------------------------------------------------
def describe(graph: Graph) -> str:
    """The graph as a reader wants it: options, modules, inputs, one line per step, the loss."""
    budget = "no budget" if graph.budget is None else \
        f"budget {graph.budget:.3f} of the way from the smallest feasible to the unconstrained peak"
    lines = [f"fuzz graph seed={graph.seed}: mesh {graph.mesh}, {graph.dtype}, {budget}, "
             f"checkpoint={graph.checkpoint!r}"]
    specs = {m.name: m for m in graph.modules}
    n_in = len(graph.inputs)
    lines += [f"  v{i} = input {v.describe()}" for i, v in enumerate(graph.inputs)]
    for k, s in enumerate(graph.steps):
        if k in graph.blocks:
            lines.append(f"  # blocks.{graph.blocks.index(k)}")
        args = [f"v{i}" for i in s.args] + [f"{name}={value!r}" for name, value in s.params]
        if s.op == "module":  # a submodule called on its input
            call = f"mods.{s.module}({', '.join(args)})  # {specs[s.module].describe()}"
        else:
            call = f"{s.op}({', '.join(args)})"
            if s.module:
                call += f"  # mods.{s.module} = {specs[s.module].describe()}"
        lines.append(f"  v{n_in + k} = {call}  -> {s.value.describe()}{' ties' if s.value.ties else ''}")
    lines.append("  loss = " + " + ".join(f"v{i}" if graph.values[i].kind == "s" else f"mean(v{i}**2)"
                                         for i in graph.loss))
    return "\n".join(lines)
