"""safetensors checkpoints, sharded: each rank reads only the blocks it holds, rank 0 writes a file streaming.

Reading: ``SafetensorsCheckpoint(path)`` is one ``.safetensors`` file, or a directory with
``model.safetensors`` or ``model.safetensors.index.json`` (Hugging Face's sharded layout: the
index maps each key to its file). ``read(key, slices)`` reads one block through
``safe_open(...).get_slice(key)[slices]`` (memory-mapped: only the block is read).
``check`` compares a checkpoint's keys and shapes with the tensors a model needs (``Wanted``: every
name of one tensor, tied names included; a fused projection's pieces count as their original
weight) and raises one error naming every missing key, unexpected key and shape mismatch.

Writing: ``StreamingWriter`` writes the documented layout itself (the safetensors library has no
streaming writer): 8 bytes little-endian header length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8, then each tensor's raw bytes, row-major, little-endian, in offset order.
The header needs only names, shapes and dtypes, so tensors can be written one at a time.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import torch

from autopar.errors import AutoparError
from autopar.runtime.materialise import original_block

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        DTYPES[getattr(torch, _name)] = _code
INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"


@dataclass(frozen=True, slots=True)
class Wanted:
    """One tensor a model needs: every name it is known by (tied weights: several) and its global shape."""

    names: tuple[str, ...]
    shape: tuple[int, ...]


def wanted_from_graph(gm) -> list[Wanted]:
    """The tensors a traced graph reads (``get_attr`` nodes), pieces of a fused weight as that weight."""
    from autopar.runtime.materialise import _fetch

    out: dict[tuple[str, ...], Wanted] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        piece = node.meta.get("param_piece")
        if piece is not None:
            names, shape = (piece.original,), tuple(_fetch(gm, piece.original).shape)
        else:
            names, shape = tuple(node.meta.get("param_aliases", (node.target,))), tuple(node.meta["val"].shape)
        out.setdefault(names, Wanted(names, shape))
    return list(out.values())


def wanted_from_module(module) -> list[Wanted]:
    """The tensors a ParallelModule holds, pieces of a fused weight as that weight."""
    out: dict[tuple[str, ...], Wanted] = {}
    originals: dict[str, tuple[int, ...]] = {}  # a fused weight's shape: its pieces' shape, the last stop on dim
    for name, layout in module._params.items():
        piece = module._pieces.get(name)
        if piece is None:
            out[layout.names] = Wanted(layout.names, layout.shape)
            continue
        shape = list(originals.get(piece.original, layout.shape))
        shape[piece.dim] = max(piece.stop, shape[piece.dim] if piece.original in originals else 0)
        originals[piece.original] = tuple(shape)
    out.update({(orig,): Wanted((orig,), shape) for orig, shape in originals.items()})
    return list(out.values())


class SafetensorsCheckpoint:
    """The keys, shapes and files of a safetensors checkpoint (module docstring); ``read`` one block."""

    def __init__(self, path) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        files = self._files()
        self.file: dict[str, str] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        for file in files:
            try:
                with safe_open(file, "pt") as handle:
                    for key in handle.keys():
                        self.file[key] = file
                        self.shape[key] = tuple(handle.get_slice(key).get_shape())
            except Exception as exc:  # a truncated or foreign file
                raise AutoparError(f"cannot read the safetensors file {file}: {exc}") from exc

    def _files(self) -> list[str]:
        path = self.path
        index = path if path.endswith(".index.json") else os.path.join(path, INDEX)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map", {})
            base = os.path.dirname(index)
            files = sorted({os.path.join(base, name) for name in weight_map.values()})
            lost = [f for f in files if not os.path.isfile(f)]
            if lost:
                raise AutoparError(f"the index {index} names files that are not there: {', '.join(lost)}")
            return files
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, SINGLE)):
                return [os.path.join(path, SINGLE)]
            raise AutoparError(f"{path} has neither {SINGLE} nor {INDEX}: pass a safetensors file, or a directory "
                               f"written by save_pretrained")
        if os.path.isfile(path):
            return [path]
        raise AutoparError(f"no checkpoint at {path!r}: pass a .safetensors file, a directory written by "
                           f"save_pretrained, or (for autoparallelize's init) a function")

    def __contains__(self, key: str) -> bool:
        return key in self.file

    def key_for(self, names) -> str | None:
        """The first of a tensor's names the checkpoint has (a tied weight is saved under one of them)."""
        return next((n for n in names if n in self.file), None)

    def read(self, key: str, slices) -> torch.Tensor:
        """``checkpoint[key][slices]``, reading only that block."""
        from safetensors import safe_open

        with safe_open(self.file[key], "pt") as handle:
            part = handle.get_slice(key)
            return part[tuple(slices)] if slices else handle.get_tensor(key)

    def check(self, wanted: list[Wanted], persistent: frozenset[str] | None = None) -> None:
        """Raise naming every missing key, unexpected key and shape mismatch. ``persistent``: the model's
        state-dict names (a buffer outside it, e.g. rotary ``inv_freq``, is not expected in a checkpoint)."""
        known = {n for w in wanted for n in w.names} | set(persistent or ())
        missing, mismatched = [], []
        for w in wanted:
            key = self.key_for(w.names)
            if key is None:
                if persistent is None or any(n in persistent for n in w.names):
                    missing.append(w.names[0])
            elif self.shape[key] != w.shape:
                mismatched.append(f"{key}: {self.shape[key]} in the checkpoint, {w.shape} in the model")
        unexpected = sorted(k for k in self.file if k not in known)
        problems = []
        for what, keys in (("missing keys", sorted(missing)), ("unexpected keys", unexpected),
                           ("shape mismatches", mismatched)):
            if keys:
                problems.append(f"{what} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
        if problems:
            raise AutoparError(f"the checkpoint {self.path} does not fit the model: " + "; ".join(problems)
                               + ". Use a checkpoint saved from this architecture and config "
                               "(model.save_pretrained), or fix its keys")


class SafetensorsSource:
    """Local shards read from a checkpoint (materialise.py's source protocol); tensors the checkpoint does
    not hold (buffers outside the state dict) come from ``fallback``."""

    def __init__(self, ckpt: SafetensorsCheckpoint, fallback, dtype_of) -> None:
        self.ckpt, self.fallback, self.dtype_of = ckpt, fallback, dtype_of

    @classmethod
    def for_graph(cls, path, gm, *, fallback, persistent=None) -> SafetensorsSource:
        from autopar.runtime.materialise import _fetch

        ckpt = SafetensorsCheckpoint(path)
        ckpt.check(wanted_from_graph(gm), persistent)
        return cls(ckpt, fallback, lambda name: _fetch(gm, name).dtype)

    def local(self, name, layout, piece, slices, device) -> torch.Tensor:
        key, block = original_block(layout, piece, slices)
        found = self.ckpt.key_for((key,) if piece is not None else layout.names)
        if found is None:
            return self.fallback.local(name, layout, piece, slices, device)
        return self.ckpt.read(found, block).to(device=device, dtype=self.dtype_of(name)).contiguous()


def load_safetensors(module, path) -> None:
    """Copy each local shard of ``module`` (a ParallelModule) from the checkpoint at ``path``."""
    ckpt = SafetensorsCheckpoint(path)
    ckpt.check(wanted_from_module(module), getattr(module, "persistent_names", None))
    mesh = module.mesh
    with torch.no_grad():
        for name, layout in module._params.items():
            piece = module._pieces.get(name)
            slices = layout.spec.local_slices(layout.shape, mesh.mesh_shape, mesh.coord)
            key, block = original_block(layout, piece, slices)
            found = ckpt.key_for((key,) if piece is not None else layout.names)
            if found is not None:  # else a buffer outside the state dict: kept as materialised
                module._attr(name).copy_(ckpt.read(found, block))


class StreamingWriter:
    """A safetensors file written one tensor at a time: ``header`` first (every name, dtype, shape), then
    ``write`` each tensor in the same order."""

    def __init__(self, path: str, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self.order: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            if dtype not in DTYPES:
                raise AutoparError(f"cannot export {name!r}: safetensors has no dtype {dtype}")
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.order.append((name, nbytes))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.file = open(path, "wb")  # closed by close()
        self.file.write(struct.pack("<Q", len(text)))
        self.file.write(text)
        self.next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, nbytes = self.order[self.next]
        if name != want:
            raise AutoparError(f"safetensors export: expected {want!r} next, got {name!r}")
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if raw.numel() != nbytes:
            raise AutoparError(f"safetensors export: {name!r} has {raw.numel()} bytes, the header says {nbytes}")
        self.file.write(raw.numpy().data)
        self.next += 1

    def close(self) -> None:
        self.file.close()
        if self.next != len(self.order):
            raise AutoparError(f"safetensors export: {len(self.order) - self.next} tensors were not written")
