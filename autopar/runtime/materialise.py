"""Where each rank's local shards come from: a source that codegen asks for one shard at a time.

    source.local(name, layout, piece, slices, device) -> this rank's shard of ``name``, on ``device``

``name`` is the stored name (a fused projection's piece is ``<weight>_piece<i>``, tracer/fused.py),
``layout`` its ``ParamLayout``, ``piece`` its ``FusedPiece`` or None, and ``slices`` this rank's
block of the stored tensor (``spec.local_slices``). A piece's block in its original weight is the
same block shifted by ``piece.start`` along ``piece.dim`` (``original_block``).

- ``TracedWeights(gm)``: the block cut from the full real tensor the traced module holds.
- ``ModelInit(model, gm, seed)``: real tensors as above; a tensor on ``meta`` is made by the model's
  own initialisers, one full tensor at a time on CPU, then cut and dropped, so a rank holds its
  shards plus at most one full tensor (a fused projection: its weight and bias, until every piece
  is cut). Its values are a function of ``seed`` and the tensor's name alone, never of the mesh.
- ``UserInit(fn, gm, fallback)``: ``fn(name, local_tensor, global_shape, local_slices)`` fills the
  block in place, in the original tensor's coordinates (False: ``fallback`` makes it).
- ``safetensors_io.SafetensorsSource``: the block read from a safetensors checkpoint.

Seeded initialisation of one tensor ``t`` with names ``n_0, n_1, ...`` (tied weights: several):
a NaN-filled CPU tensor replaces ``t`` wherever the model holds it (every other tensor stays on
meta, so the initialisers write nothing else), the CPU generator is seeded with
``sha256(f"{seed}/{n_0}")`` inside ``fork_rng`` (the caller's random stream is untouched), and the
initialisers that can touch ``t`` run, in the order eager construction runs them: for every module
that holds ``t`` and every ancestor, children before parents, ``reset_parameters()`` (else
``_reset_parameters()`` or ``reset_running_stats()``), then for a Hugging Face model the
``_init_weights(module)`` of its nearest ``PreTrainedModel`` (as ``initialize_weights``' smart_apply
dispatches it). An element left NaN (integers: left at the dtype's minimum; booleans: different
under two fills) is an error naming the tensor.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter

import torch
import torch.fx as fx

from autopar.errors import AutoparError

INIT_HINT = ("pass autoparallelize(..., init=fn) with fn(name, local_tensor, global_shape, local_slices) filling "
             "it in place, or init='<safetensors checkpoint>', or build the model with real weights")


def _fetch(module: torch.nn.Module, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _cut(full: torch.Tensor, slices, device) -> torch.Tensor:
    """A new tensor holding ``full[slices]`` on ``device`` (never a view of ``full``)."""
    return full.detach()[slices].to(device).clone()


def original_block(layout, piece, slices) -> tuple[str, tuple[slice, ...]]:
    """``(name, slices)`` of a stored block in the tensor the model knows: a piece's block shifted by its start."""
    if piece is None:
        return layout.names[0], tuple(slices)
    shifted = list(slices)
    s = shifted[piece.dim]
    shifted[piece.dim] = slice(s.start + piece.start, s.stop + piece.start)
    return piece.original, tuple(shifted)


def block_shape(slices) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in slices)


def seed_of(seed: int, name: str) -> int:
    """A generator seed from (seed, name): stable across processes and runs (not Python's ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def blank(shape, dtype: torch.dtype, device="cpu", fill=None) -> torch.Tensor:
    """A tensor whose every element reads as unset: NaN, or an integer dtype's minimum (``fill`` overrides)."""
    if fill is None:
        fill = float("nan") if dtype.is_floating_point or dtype.is_complex else \
            torch.iinfo(dtype).min if dtype != torch.bool else False
    return torch.full(tuple(shape), fill, dtype=dtype, device=device)


def unset(t: torch.Tensor, chunk: int = 1 << 22) -> int:
    """How many elements still hold ``blank``'s value (0 for booleans, which have no unset value).
    Counted in chunks, so the check needs no more than a few MiB beside the tensor."""
    if t.dtype == torch.bool:
        return 0
    floating = t.dtype.is_floating_point or t.dtype.is_complex
    flat = t.detach().reshape(-1)
    count = 0
    for part in flat.split(chunk):
        count += int((torch.isnan(part) if floating else part == torch.iinfo(t.dtype).min).count_nonzero())
    return count


def persistent_names(model: torch.nn.Module) -> frozenset[str]:
    """Every name of the model's state dict (parameters and persistent buffers, tied names included)."""
    return frozenset(model.state_dict(keep_vars=True))


class TracedWeights:
    """Blocks cut from the real tensors the traced module holds (the model was built with weights)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm

    def local(self, name, layout, piece, slices, device) -> torch.Tensor:
        full = _fetch(self.gm, name)
        if full.is_meta:
            raise AutoparError(f"{name!r} is on 'meta' and this source has no initialiser for it: {INIT_HINT}")
        return _cut(full, slices, device)


class ModelInit:
    """Real tensors cut as they are; tensors on meta made by the model's initialisers (module docstring)."""

    def __init__(self, model: torch.nn.Module, gm: fx.GraphModule, seed: int = 0) -> None:
        self.model, self.gm, self.seed = model, gm, seed
        self._tensors: dict[str, torch.Tensor] = {}
        self._first: dict[int, str] = {}  # id(tensor) -> the first name the model lists it under
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self._tensors[name] = t
            self._first.setdefault(id(t), name)
        self._sites: dict[int, list] = {}  # id(tensor) -> [(module qualname, module, attribute, is_param)]
        for qual, module in model.named_modules(remove_duplicate=False):
            for store, is_param in ((module._parameters, True), (module._buffers, False)):
                for leaf, t in store.items():
                    if t is not None:
                        self._sites.setdefault(id(t), []).append((qual, module, leaf, is_param))
        self._order = _post_order(model)
        self._pieces_left = Counter(n.meta["param_piece"].original for n in gm.graph.nodes if "param_piece" in n.meta)
        self._held: dict[str, torch.Tensor] = {}  # a fused weight, until every piece of it is cut

    def local(self, name, layout, piece, slices, device) -> torch.Tensor:
        traced = _fetch(self.gm, name)
        if not traced.is_meta:
            return _cut(traced, slices, device)
        key, slices = original_block(layout, piece, slices)
        full = self._held.pop(key, None)
        if full is None:
            full = self.full(key)
        if piece is not None:
            self._pieces_left[key] -= 1
            if self._pieces_left[key] > 0:
                self._held[key] = full
        return _cut(full, slices, device)

    def full(self, name: str) -> torch.Tensor:
        """The full tensor ``name`` on CPU: as the model holds it if real, else as its initialisers make it."""
        if name not in self._tensors:
            raise AutoparError(f"the model has no parameter or buffer named {name!r}")
        t = self._tensors[name]
        if not t.is_meta:
            return t.detach().cpu().clone()
        sites = self._sites[id(t)]
        canonical = self._first[id(t)]
        if t.dtype == torch.bool:  # no unset value: elements that differ between two fills were never written
            low, high = self._initialise(t, sites, canonical, False), self._initialise(t, sites, canonical, True)
            left = int((low != high).sum())
            full = low
        else:
            full = self._initialise(t, sites, canonical, None)
            left = unset(full)
        if left:
            kind = "parameter" if sites[0][3] else "buffer"
            owners = ", ".join(sorted({type(m).__name__ for _q, m, _l, _p in sites}))
            raise AutoparError(
                f"{left} of {t.numel()} elements of the {kind} {canonical!r} {tuple(t.shape)} (in {owners}) are left "
                f"uninitialised: {self._describe(sites)} did not write them. To initialise it, {INIT_HINT}")
        return full

    def _initialise(self, t: torch.Tensor, sites, canonical: str, fill) -> torch.Tensor:
        full = blank(t.shape, t.dtype, "cpu", fill)
        value = torch.nn.Parameter(full, requires_grad=t.requires_grad) if sites[0][3] else full
        saved = []
        for _qual, module, leaf, is_param in sites:
            store = module._parameters if is_param else module._buffers
            saved.append((store, leaf, store[leaf]))
            store[leaf] = value
        step = "?"
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of(self.seed, canonical))
                for what, run in self._initialisers(sites):
                    step = what
                    run()
        except Exception as exc:
            raise AutoparError(f"initialising {canonical!r} on CPU: {step} failed ({type(exc).__name__}: {exc}). "
                               f"To initialise it otherwise, {INIT_HINT}") from exc
        finally:
            for store, leaf, original in saved:
                store[leaf] = original
        return full

    def _initialisers(self, sites):
        """``(description, call)`` for every initialiser that can touch a tensor held at ``sites``, in order."""
        relevant = {""}
        for qual, *_ in sites:
            parts = qual.split(".") if qual else []
            relevant.update(".".join(parts[:i]) for i in range(len(parts) + 1))
        chain = [(qual, module, hf) for qual, module, hf in self._order if qual in relevant]
        for qual, module, _hf in chain:
            for method in ("reset_parameters", "_reset_parameters", "reset_running_stats"):
                if callable(getattr(module, method, None)):
                    yield f"{type(module).__name__}.{method}() of {qual or 'the model'}", getattr(module, method)
                    break
        for qual, module, hf in chain:
            if hf is not None:
                yield (f"{type(hf).__name__}._init_weights({qual or 'the model'})",
                       lambda hf=hf, module=module: hf._init_weights(module))

    def _describe(self, sites) -> str:
        steps = [step for step, _run in self._initialisers(sites)]
        return ", ".join(steps) if steps else "no initialiser (no reset_parameters, not a Hugging Face model)"


def _post_order(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, object]]:
    """``(qualname, module, nearest PreTrainedModel or None)``, children before parents, each module once."""
    pretrained = sys.modules["transformers"].PreTrainedModel if "transformers" in sys.modules else ()
    out, seen = [], set()

    def visit(module, qual, hf):
        if pretrained and isinstance(module, pretrained):
            hf = module
        for name, child in module.named_children():
            visit(child, f"{qual}.{name}" if qual else name, hf)
        if id(module) not in seen:
            seen.add(id(module))
            out.append((qual, module, hf))

    visit(model, "", None)
    return out


class UserInit:
    """``fn(name, local_tensor, global_shape, local_slices)`` fills each block in place, in the coordinates of
    the tensor the model knows (a fused piece: its original weight); returning False defers to ``fallback``."""

    def __init__(self, fn, gm: fx.GraphModule, fallback) -> None:
        self.fn, self.gm, self.fallback = fn, gm, fallback

    def local(self, name, layout, piece, slices, device) -> torch.Tensor:
        key, block = original_block(layout, piece, slices)
        shape = layout.shape if piece is None else tuple(_fetch(self.gm, piece.original).shape)
        out = blank(block_shape(block), _fetch(self.gm, name).dtype, device)
        try:
            with torch.no_grad():
                done = self.fn(key, out, shape, block)
        except Exception as exc:
            raise AutoparError(f"init function {getattr(self.fn, '__name__', self.fn)!r} raised on {key!r} (block "
                               f"{_show(block)} of {shape}): {type(exc).__name__}: {exc}. It is called as "
                               f"init(name, local_tensor, global_shape, local_slices) and fills local_tensor "
                               f"in place") from exc
        if done is False:
            return self.fallback.local(name, layout, piece, slices, device)
        left = unset(out)
        if left:
            raise AutoparError(f"init function {getattr(self.fn, '__name__', self.fn)!r} left {left} of {out.numel()} "
                               f"elements of {key!r} (block {_show(block)} of {shape}) unset: it must fill "
                               f"local_tensor in place (e.g. local_tensor.normal_()), or return False to leave "
                               f"{key!r} to the model's initialisers")
        return out


def _show(block) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in block) + "]"


def source_for(model: torch.nn.Module, gm: fx.GraphModule, init, seed: int):
    """The source ``autoparallelize``'s ``init`` option names (``PlanOptions``)."""
    default = ModelInit(model, gm, seed)
    if init is None:
        return default
    if callable(init):
        return UserInit(init, gm, default)
    if init.startswith("function ") and not os.path.exists(init):
        raise AutoparError(f"init={init!r} was recorded from a function (a saved plan keeps only its name): pass "
                           f"autoparallelize(..., init=<that function>) again")
    from autopar.runtime.safetensors_io import SafetensorsSource

    return SafetensorsSource.for_graph(init, gm, fallback=default, persistent=persistent_names(model))
