"""Codegen: a traced graph and its ShardingPlan -> the GraphModule that one rank runs.

The plan is an argument (``generate(gm, plan, mesh, sc)``); nothing is read from or written to
the traced graph's ``node.meta`` but what the tracer learned about the model.

Walks the traced graph once, in order, and writes a new graph:

- placeholder: the global input arrives on every rank; ``self.comm`` keeps this rank's piece
  (R -> the placeholder's spec: a local split, no communication).
- param / buffer: a ``get_attr`` of this rank's shard, kept under the parameter's original name,
  so ``named_parameters()`` reads like the model's. The shard comes from ``source``
  (``runtime/materialise.py``): cut from the traced module's real tensor by default, or made from
  meta by the model's initialisers, a user function or a checkpoint.
- op: each input is resharded from its producer's spec to the spec the chosen strategy wants
  (one ``self.comm(x, src, dst, global_shape)`` per distinct producer and spec), and shape
  arguments are made local (``localize.local_args``).
- output: every output is resharded to replicated, and its gradient scaled by 1/world (every
  rank seeds the same full loss; the runtime's collectives are exact adjoints, so the sum of
  the ranks' objectives must be the loss once).

Parameters replicated on some mesh axes are read through ``self.sync_<name>`` (``grad_sync.ParamUse``):
their per-rank gradient contributions are summed over those axes in chunks (``grad_sync.GradSync``:
bucketed, asynchronous, overlapped with the rest of backward) and written to ``.grad`` when backward
ends.

With offload (Gemini, ``runtime/gemini``) every trainable parameter is read through its chunk, one
``sync_<name>`` read per use placed right before the op that uses it, after one
``self.gemini_fetch(names)`` that brings the op's chunks to the device: a chunk may leave the device
between two ops, so no read of a parameter outlives the op it feeds.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
from functools import lru_cache

import torch
import torch.fx as fx

from autopar.errors import AutoparError, NodeError
from autopar.runtime.collectives import SumLater
from autopar.runtime.gemini import ChunkFetch
from autopar.runtime.gemini import attach as attach_gemini
from autopar.runtime.grad_sync import DEFAULT_BUCKET_BYTES, GradSync, ParamUse
from autopar.runtime.localize import ShardedCrossEntropy, local_args, local_target, mean_scale, vocab_parallel_module
from autopar.runtime.materialise import TracedWeights
from autopar.runtime.parallel_module import LocalOutput, ParallelModule, ParamLayout
from autopar.runtime.param_gather import BucketGather, gathered_weight, partition, single_gather
from autopar.runtime.rng import SeededRandom, StepCounter, draws_random
from autopar.runtime.sync_batchnorm import sharded_batch_norm
from autopar.spec import ShardingSpec
from autopar.tracer.fused import FusedPiece
from autopar.tracer.meta import is_multi, tensor_meta


@lru_cache(maxsize=4096)
def _spec(text: str) -> ShardingSpec:
    return ShardingSpec.parse(text)


class Reshard(torch.nn.Module):
    """``self.comm(x, 'S0R', 'RR', (8, 64))``: x, laid out as the first spec, re-laid out as the second."""

    def __init__(self, sc, mesh) -> None:
        super().__init__()
        self.sc, self.mesh = sc, mesh

    def forward(self, x, src: str, dst: str, shape: tuple[int, ...], uniform: tuple[int, ...] = ()):
        return self.sc.apply(x, _spec(src), _spec(dst), shape, self.mesh, frozenset(uniform))


class _ScaleGrad(torch.autograd.Function):
    """Identity in forward; multiplies the gradient by ``factor`` in backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x, factor: float):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    return _ScaleGrad.apply(x, factor)


def check_input(x, name: str, shape: tuple[int, ...]):
    """The plan was made for these global input shapes; anything else would shard wrongly."""
    if isinstance(x, torch.Tensor) and tuple(x.shape) != shape:
        raise AutoparError(
            f"input {name!r} has shape {tuple(x.shape)} but the plan was made for {shape}: every rank must pass "
            f"the same global batch the model was autoparallelized with, or call autoparallelize again "
            f"with example inputs of the new shape")
    return x


def _global_shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(tensor_meta(node).shape)


def _fetch(module: torch.nn.Module, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def generate(gm: fx.GraphModule, plan, mesh, sc, source=None, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
             local_outputs: bool = False, seed: int = 0, reduce_dtype=torch.float32, offload="none",
             device_cap: float | None = None, recomputed=frozenset()) -> ParallelModule:
    """The per-rank module for ``gm`` under ``plan`` (a ShardingPlan of the same traced graph).

    ``source.local(name, layout, piece, slices, device)`` gives each local shard (materialise.py;
    default: cut from the real tensors ``gm`` holds). Parameters replicated on some mesh axes are read
    through ``sync_<name>`` (``grad_sync.ParamUse``) and their gradients reduced in chunks of
    ``bucket_bytes`` (``grad_sync.GradSync``). ``local_outputs``: every output with dims leaves as this
    rank's shard (a ``ShardedOutput``), not gathered. ``seed``: every random op draws from its own seed
    (``rng.SeededRandom``), derived from this one. ``offload`` ("auto" or {"params": f, "optimizer": g}):
    Gemini places the chunks (``runtime/gemini``) within ``device_cap`` bytes. Weights stored split and
    used whole are gathered in buckets of ``bucket_bytes`` (``param_gather.py``), but for the uses inside
    ``recomputed`` (the traced names of the checkpoint regions: a region gathers its own weights again).
    """
    emitter = _Emitter(gm, plan, mesh, sc, GradSync(mesh, bucket_bytes, reduce_dtype),
                       source if source is not None else TracedWeights(gm))
    emitter.seed, emitter.gemini = seed, offload != "none"
    if emitter.gemini:
        emitter.root["gemini_fetch"] = ChunkFetch(emitter.grad_sync)
    if local_outputs:
        emitter.root["local_out"] = LocalOutput(sc, mesh)
    if not emitter.gemini:
        emitter.plan_gathers(sc, bucket_bytes, frozenset(recomputed))
    for node in gm.graph.nodes:
        emitter.emit(node)
    emitter.graph.lint()
    module = ParallelModule(emitter.root, emitter.graph, class_name="ParallelModule")
    module._setup(mesh=mesh, sc=sc, params=emitter.params, pieces=emitter.pieces, grad_sync=emitter.grad_sync)
    emitter.grad_sync.build([(name, module.get_parameter(name), axes, uses)
                             for name, (axes, uses) in emitter.synced.items()])
    module.register_forward_pre_hook(emitter.rng_step)
    if emitter.gemini:
        emitter.check_chunked_reads()
        attach_gemini(module, emitter.grad_sync, offload, device_cap, mesh.device)
    return module


class _Emitter:
    """Writes the per-rank graph, one traced node at a time (``env``: traced node -> new node)."""

    def __init__(self, gm: fx.GraphModule, plan, mesh, sc, grad_sync: GradSync, source) -> None:
        self.gm, self.mesh, self.grad_sync, self.source = gm, mesh, grad_sync, source
        self.synced: dict[str, tuple[tuple[int, ...], int]] = {}  # execution order: name -> (axes, uses)
        self.rng_step, self.seed, self.gemini = StepCounter(), 0, False
        self._uniform: dict[int, dict[fx.Node, bool]] = {}  # mesh axis -> node -> its gradient is uniform
        self.position = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.strategy_of = plan.strategy_lookup()
        self.mesh_shape = tuple(mesh.mesh_shape)
        self.graph = fx.Graph()
        self.graph._codegen = copy.deepcopy(gm.graph._codegen)
        self.root: dict[str, object] = {"comm": Reshard(sc, mesh)}
        self.env: dict[fx.Node, fx.Node] = {}
        self.resharded: dict[tuple[fx.Node, ShardingSpec], fx.Node] = {}
        self.params: dict[str, ParamLayout] = {}  # stored name -> its layout
        self.pieces: dict[str, FusedPiece] = {}  # stored name of a fused projection's piece -> where it sits
        self.bucket_of: dict[tuple[fx.Node, ShardingSpec], object] = {}  # (weight, spec) -> its param_gather.Bucket

    def out_spec(self, node: fx.Node) -> ShardingSpec | None:
        strategy = self.strategy_of(node)
        return strategy.output if strategy is not None and node.meta.get("tensor") is not None else None

    # ---- resharding ----------------------------------------------------------------------
    def reshard(self, value: fx.Node, src: ShardingSpec, dst: ShardingSpec, shape, uniform=()) -> fx.Node:
        args = (value, str(src), str(dst), shape) + ((tuple(uniform),) if uniform else ())
        new = self.graph.call_module("comm", args)
        new.meta["reshard"] = (src, dst)
        return new

    def arrive(self, old: fx.Node, dst: ShardingSpec | None) -> fx.Node:
        """``old``'s value laid out as ``dst``: one resharding per distinct (producer, spec)."""
        src = self.out_spec(old)
        if dst is None or src is None or src == dst or is_multi(old.meta["tensor"]):
            return self.env[old]
        if (old, dst) in self.bucket_of and (old, dst) not in self.resharded:
            self.gather_bucket(self.bucket_of[(old, dst)])
        if (old, dst) not in self.resharded:
            readers = [u for u in old.users if self._wants(u, old) == dst]
            uniform = [a for a in dst.partial_free_axes(src) if all(self.reads_uniform(u, a) for u in readers)]
            self.resharded[(old, dst)] = self.reshard(self.env[old], src, dst, _global_shape(old), uniform)
        return self.resharded[(old, dst)]

    # ---- weights gathered in buckets (param_gather.py) --------------------------------------
    def plan_gathers(self, sc, bucket_bytes: float, recomputed: frozenset) -> None:
        """Lay the weights whose gather is one all-gather into buckets, in the order forward first uses them."""
        candidates, seen = [], set()
        for user in self.gm.graph.nodes:
            if user.op == "output" or user.name in recomputed:
                continue
            for arg in user.all_input_nodes:
                want, src = self._wants(user, arg), self.out_spec(arg)
                if want is None or src is None or want == src or (arg, want) in seen or not gathered_weight(arg):
                    continue
                seen.add((arg, want))
                readers = [u for u in arg.users if self._wants(u, arg) == want]
                if arg.name in recomputed or any(u.name in recomputed or u.op == "output" for u in readers):
                    continue
                tm = arg.meta["tensor"]
                gather = single_gather(sc, src, want, tm.shape, tm.dtype.itemsize, self.mesh_shape)
                if gather is not None:
                    candidates.append((arg, want, gather[0], gather[1], tm.dtype, gather[2]))
        for bucket in partition(candidates, bucket_bytes):
            for node, want, _dim in bucket.members:
                self.bucket_of[(node, want)] = bucket

    def ensure(self, node: fx.Node) -> None:
        """Emit ``node`` (and what it reads) now if it is not yet: a bucket's later members, early."""
        if node in self.env:
            return
        for arg in node.all_input_nodes:
            self.ensure(arg)
        self.emit(node)

    def gather_bucket(self, bucket) -> None:
        """One ``gather_<k>`` call for every member of ``bucket``; each member's whole tensor is one of its items."""
        for node, _want, _dim in bucket.members:
            self.ensure(node)
        name = f"gather_{bucket.index}"
        self.root[name] = BucketGather(self.mesh, bucket.axis, tuple(d for _n, _w, d in bucket.members),
                                       tuple(n.name for n, _w, _d in bucket.members))
        call = self.graph.call_module(name, tuple(self.env[n] for n, _w, _d in bucket.members))
        call.meta["traced"] = bucket.members[0][0].name
        for k, (node, want, _dim) in enumerate(bucket.members):
            item = self.graph.call_function(operator.getitem, (call, k))
            item.meta.update(traced=node.name, reshard=(self.out_spec(node), want))
            self.resharded[(node, want)] = item

    def _wants(self, user: fx.Node, arg: fx.Node) -> ShardingSpec | None:
        """The spec ``user``'s chosen strategy wants ``arg`` in (the output node: replicated)."""
        if user.op == "output":
            spec = self.out_spec(arg)
            return ShardingSpec.replicate(spec.ndim) if spec is not None else None
        strategy = self.strategy_of(user)
        if strategy is None:
            return None
        return dict(zip(user.all_input_nodes, strategy.inputs)).get(arg)

    def uniform(self, node: fx.Node, axis: int) -> bool:
        """Whether ``node``'s output gradient is the same on every rank of mesh axis ``axis``: every path
        from it to the outputs runs replicated on the axis (no input or output split or partial on it),
        and the outputs leave whole (every rank seeds the same loss)."""
        if axis not in self._uniform:  # every node at once, users before producers
            known: dict[fx.Node, bool] = {}
            for n in reversed(self.gm.graph.nodes):
                known[n] = all(self._uniform_use(u, axis, known) for u in n.users)
            self._uniform[axis] = known
        return self._uniform[axis][node]

    def reads_uniform(self, user: fx.Node, axis: int) -> bool:
        """Whether the gradient ``user`` sends back to its inputs is the same on every rank of ``axis``: its
        own strategy runs replicated on the axis and its output's gradient is uniform there. (That ``user``'s
        output gradient is uniform is not enough: a strategy split on the axis, e.g. ``S0 = S0 x R``, sums
        each rank's own rows into the replicated input's gradient; fuzz seed 1137.)"""
        self.uniform(user, axis)  # fills the table
        return self._uniform_use(user, axis, self._uniform[axis])

    def _uniform_use(self, user: fx.Node, axis: int, known: dict) -> bool:
        if user.op == "output":
            return "local_out" not in self.root
        strategy = self.strategy_of(user)
        if strategy is None:
            return True  # a non-tensor value: no gradient flows through it
        if any(s is not None and axis in s.used_axes() for s in (strategy.output, *strategy.inputs)):
            return False
        return known[user]

    # ---- one method per kind of node ---------------------------------------------------------
    def emit(self, node: fx.Node) -> None:
        """Write ``node``'s local form (once: a bucket may have written it early); every new node records it
        as ``meta["traced"]`` (but those a bucket wrote for other nodes meanwhile)."""
        if node in self.env:
            return
        start = len(self.graph.nodes)
        self._emit(node)
        for _k, new in zip(range(len(self.graph.nodes) - start), reversed(self.graph.nodes)):
            new.meta.setdefault("traced", node.name)

    def _emit(self, node: fx.Node) -> None:
        strategy = self.strategy_of(node)
        if strategy is None and node.op != "output" and node.meta.get("tensor") is not None:
            raise NodeError(node, "has no chosen strategy", stage="generating code for",
                            hint="plan with autopar.plan on the same traced graph before generating code")
        if node.op == "placeholder":
            self.env[node] = self.placeholder(node)
        elif node.op == "get_attr":  # under Gemini each use reads it through its chunk, in op()
            attr = self.local_attr(node)
            self.env[node] = attr if self.gemini else self.synced_use(attr)
        elif node.op == "output":
            self.graph.output(fx.node.map_arg(node.args[0], self.finish))
        elif node.meta.get("op") == "getitem" and is_multi(node.args[0].meta.get("tensor")):
            self.env[node] = self.getitem(node)
        elif strategy is None:  # a non-tensor value (e.g. a device or dtype): copied as it is
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
        else:
            self.env[node] = self.op(node, strategy)

    def placeholder(self, node: fx.Node) -> fx.Node:
        """The global input, checked against the planned shape, then this rank's piece of it."""
        default = node.args[0] if node.args else inspect.Parameter.empty
        new = self.graph.placeholder(node.target, default_value=default)
        new.meta = dict(node.meta)
        spec = self.out_spec(node)
        if spec is None or is_multi(node.meta["tensor"]):
            return new
        new = self.graph.call_function(check_input, (new, node.target, _global_shape(node)))
        if spec.is_replicated():
            return new
        return self.reshard(new, ShardingSpec.replicate(spec.ndim), spec, _global_shape(node))

    def local_attr(self, node: fx.Node) -> fx.Node:
        """This rank's shard of a parameter or buffer, registered under its original name."""
        full = _fetch(self.gm, node.target)  # real or on meta: its shape, dtype and kind
        spec = self.out_spec(node) or ShardingSpec.replicate(full.dim())
        name = node.meta.get("param", node.target)
        is_param = isinstance(full, torch.nn.Parameter)
        layout = ParamLayout(spec, tuple(full.shape), tuple(node.meta.get("param_aliases", (name,))), is_param)
        piece = node.meta.get("param_piece")  # a column block of a fused projection's weight (tracer/fused.py)
        slices = spec.local_slices(layout.shape, self.mesh_shape, self.mesh.coord)
        # under Gemini a trainable parameter starts on the host: its chunk comes to the device when used
        device = "cpu" if self.gemini and is_param and full.requires_grad else self.mesh.device
        local = self.source.local(name, layout, piece, slices, device)
        self.root[name] = torch.nn.Parameter(local, requires_grad=full.requires_grad) if is_param else local
        self.params[name] = layout
        if piece is not None:
            self.pieces[name] = piece
        new = self.graph.get_attr(name)
        new.meta = dict(node.meta)
        return new

    def synced_use(self, attr: fx.Node) -> fx.Node:
        """A trainable parameter replicated on some mesh axes is read through its ParamUse, so its gradient
        contributions are summed over those axes in its chunk (grad_sync.py); anything else as it is."""
        name = attr.target
        layout = self.params[name]
        value = self.root[name]
        axes = tuple(a for a, n in enumerate(self.mesh_shape) if n > 1 and a not in layout.spec.used_axes())
        if not (layout.is_param and value.requires_grad and (axes or self.gemini)):
            return attr
        before = self.synced.get(name, (axes, 0))
        self.synced[name] = (axes, before[1] + 1)
        module = f"sync_{name.replace('.', '_')}"
        self.root[module] = ParamUse(self.grad_sync, name)
        new = self.graph.call_module(module, (attr,))
        new.meta = dict(attr.meta)
        return new

    def finish(self, node: fx.Node) -> fx.Node:
        """An output: gathered to replicated, its gradient scaled by 1/world (every rank seeds the loss)."""
        spec = self.out_spec(node)
        if spec is None:
            return self.env[node]
        if "local_out" in self.root and spec.ndim:  # as it is: this rank's shard, its gradient its own piece
            return self.graph.call_module("local_out", (self.env[node], str(spec), _global_shape(node)))
        replicated = ShardingSpec.replicate(spec.ndim)
        later = None if (node, replicated) in self.resharded else self.sum_later(node, spec)
        if later is not None:  # a scalar (the loss) summed while backward starts: nothing waits in forward
            value = self.graph.call_function(scale_grad, (self.env[node], 1.0 / self.mesh.world_size))
            return self.graph.call_module(later, (value,))
        value = self.arrive(node, replicated)
        return self.graph.call_function(scale_grad, (value, 1.0 / self.mesh.world_size))

    def sum_later(self, node: fx.Node, spec: ShardingSpec) -> str | None:
        """The module summing a partial scalar output without waiting (``collectives.PendingSum``), or None
        where the sum is not one all-reduce of one group (a partial on some, not all, of several axes) or
        its gradient is not the same on every rank."""
        live = [a for a in spec.partial if self.mesh_shape[a] > 1]
        every = [a for a, n in enumerate(self.mesh_shape) if n > 1]
        if spec.ndim or not live or not node.meta["tensor"].dtype.is_floating_point:
            return None
        if not all(self.reads_uniform(u, a) for a in live for u in node.users):
            return None
        if len(live) == 1:
            group = self.mesh.group(live[0])
        elif live == every:
            group = torch.distributed.group.WORLD
        else:
            return None
        name = f"sum_later_{node.name}"
        self.root[name] = SumLater(group, math.prod(self.mesh_shape[a] for a in live))
        return name

    def getitem(self, node: fx.Node) -> fx.Node:
        """An element of a tuple-valued node, then resharded on its own if the plan asks."""
        producer = node.args[0]
        new = self.graph.call_function(operator.getitem, (self.env[producer], node.args[1]))
        new.meta = dict(node.meta)
        src, dst = self.out_spec(producer), self.out_spec(node)
        return self.reshard(new, src, dst, _global_shape(node)) if src and dst and src != dst else new

    def stored_specs(self, node: fx.Node) -> tuple:
        """The specs batch_norm's running statistics are stored in."""
        return tuple(self.out_spec(n) if isinstance(n, fx.Node) else None for n in node.args[1:3])

    def chunked(self, node: fx.Node) -> bool:
        """Whether a traced node is a trainable parameter that Gemini keeps in a chunk."""
        if node.op != "get_attr":
            return False
        name = self.env[node].target
        return self.params[name].is_param and self.root[name].requires_grad

    def fetch_chunks(self, node: fx.Node) -> list[fx.Node]:
        """Gemini: ``gemini_fetch`` of the op's parameters, then a fresh chunk read of each (returned, so
        ``op`` can put the plain ``get_attr`` back once the op's arguments are made)."""
        reads = [n for n in node.all_input_nodes if self.chunked(n)]
        if reads:
            self.graph.call_module("gemini_fetch", (tuple(self.env[n].target for n in reads),))
            for n in reads:
                self.env[n] = self.synced_use(self.env[n])
        return reads

    def check_chunked_reads(self) -> None:
        """Every read of a chunked parameter goes through its chunk (else autograd would write ``.grad``
        of a buffer that moves)."""
        for new in self.graph.nodes:
            if new.op == "get_attr" and new.target in self.grad_sync.slots:
                bad = [u for u in new.users if not (u.op == "call_module" and str(u.target).startswith("sync_"))]
                if bad:
                    raise AutoparError(
                        f"offload: parameter {new.target!r} is read by %{bad[0].name} without going through its "
                        f"chunk; offload does not support this op yet: pass offload='none'")

    def op(self, node: fx.Node, strategy) -> fx.Node:
        """An op on local shards: inputs resharded to the strategy's specs, shape arguments made local."""
        reads = self.fetch_chunks(node) if self.gemini else []
        try:
            return self._op(node, strategy)
        finally:
            for n in reads:  # back to the plain get_attr (the next op reads it anew)
                self.env[n] = self.env[n].args[0]

    def _op(self, node: fx.Node, strategy) -> fx.Node:
        specs = dict(zip(node.all_input_nodes, strategy.inputs))
        if node.meta.get("op") == "batch_norm":  # the stored running statistics, updated in place
            specs.update({n: None for n in node.args[1:3] if isinstance(n, fx.Node)})
        args = fx.node.map_arg(node.args, lambda n: self.arrive(n, specs.get(n)))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.arrive(n, specs.get(n)))
        args = local_args(node, strategy, tuple(args), self.mesh_shape)
        op = node.meta.get("op")
        swapped = vocab_parallel_module(node, strategy, self.mesh)  # vocab split: a masked, local op
        batch_axes = strategy.inputs[0].dims[0] if op == "cross_entropy" and strategy.inputs[0].dims else ()
        if swapped is not None:
            self.root[swapped[0]] = swapped[1]
            new = self.graph.call_module(swapped[0], args, kwargs)
        elif op == "batch_norm":  # statistics synchronised over the axes splitting the batch
            self.root[f"bn_{node.name}"] = sharded_batch_norm(node, strategy, self.stored_specs(node), self.mesh,
                                                                  self.root["comm"].sc)
            new = self.graph.call_module(f"bn_{node.name}", args, kwargs)
        elif batch_axes:  # the target's rows as the logits' (a local slice where it is held whole), the count
            held = strategy.inputs[1]  # from the target as held
            rows = ShardingSpec((batch_axes,) + held.dims[1:])
            target = args[1] if rows == held else self.reshard(args[1], held, rows, _global_shape(node.args[1]))
            name = f"ce_{node.name}"
            self.root[name] = ShardedCrossEntropy(self.mesh, held.dims[0])
            new = self.graph.call_module(name, (args[0], target, args[1]) + tuple(args[2:]), kwargs)
        elif draws_random(node):  # under a seed of its own, by the shard of the output it makes
            name = f"rng_{node.name}"
            shard = tuple(strategy.output.shard_index(d, self.mesh_shape, self.mesh.coord)
                          for d in range(strategy.output.ndim))
            self.root[name] = SeededRandom(node.target, self.seed, self.position[node], shard, self.rng_step,
                                           self.mesh.device)
            new = self.graph.call_module(name, args, kwargs)
        else:
            new = self.graph.create_node(node.op, local_target(node, strategy), args, kwargs, name=node.name)
        new.meta = dict(node.meta)
        if op == "mean" and (scale := mean_scale(node, strategy, self.mesh_shape)) != 1.0:
            new = self.graph.call_function(operator.mul, (new, scale))
        return new
