"""Checkpoints of a ParallelModule: sharded save and load (DCP), safetensors load and export.

    autopar.save_checkpoint(module, "ckpt", optimizer)     # every rank writes its shards (DCP)
    autopar.load_checkpoint(module, "ckpt", optimizer)     # under any plan or mesh
    autopar.load_checkpoint(module, "hf_dir")              # a safetensors checkpoint, slice by slice
    autopar.export_safetensors(module, "out", config=model.config)   # one file, original names

**DCP** (``torch.distributed.checkpoint``, the format of torchtitan and FSDP2). Each stored tensor is
a DTensor over a DeviceMesh of the same ranks and shape as the module's mesh (ranks row-major, as
``ClusterInfo.coord``), with ``ShardingSpec.to_placements``; so a checkpoint written under one
plan or mesh loads under another, DCP reading for each rank the block it now holds. Keys:
``model/<stored name>``, ``optim/<stored name>/<state>`` (a state tensor shaped like its
parameter is laid out like it; others, e.g. Adam's ``step``, are plain), and ``optim/param_groups``
(the hyperparameters, pickled). Atomic: every rank writes into ``<path>.saving``; once all have
written and rank 0 has written the metadata, rank 0 moves the previous checkpoint to ``<path>.old``,
renames ``<path>.saving`` to ``<path>`` and removes ``<path>.old``. A rank dying mid-save leaves
``<path>`` (or, between the two renames, ``<path>.old``, which ``load`` falls back to) intact.
The directory must be on a filesystem every rank sees.

**Export**: one tensor at a time is gathered to full on every rank (a fused weight: its pieces,
joined) and rank 0 streams it into the file (``safetensors_io.StreamingWriter``), under the first
of its original names (a tied weight once, as ``save_pretrained`` does); buffers outside the
model's state dict are left out.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil

import torch
import torch.distributed as dist

from autopar.errors import AutoparError
from autopar.runtime.safetensors_io import SINGLE, StreamingWriter, load_safetensors
from autopar.spec import ShardingSpec

SAVING, OLD, METADATA = ".saving", ".old", ".metadata"


# ---- the public functions -----------------------------------------------------------------------
def save_checkpoint(module, path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``module``'s shards (and ``optimizer``'s state) to the DCP directory ``path``; every rank calls it."""
    import torch.distributed.checkpoint as dcp

    _check_module(module, "save_checkpoint")
    path = os.fspath(path)
    state = _dcp_state(module, optimizer, None)
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(path + SAVING, ignore_errors=True)  # what a failed save left behind
    dist.barrier()
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path + SAVING))
    dist.barrier()
    if rank0:
        _swap_in(path)
    dist.barrier()


def load_checkpoint(module, path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load into ``module`` (and ``optimizer``): a DCP directory written by ``save_checkpoint`` (under any
    plan or mesh), or a safetensors checkpoint (a file, or a ``save_pretrained`` directory; no optimizer
    state). Every rank calls it; each reads only the blocks it holds."""
    _check_module(module, "load_checkpoint")
    path = os.fspath(path)
    found = _dcp_dir(path)
    if found is not None:
        return _load_dcp(module, found, optimizer)
    if optimizer is not None:
        raise AutoparError(f"{path} is not a checkpoint written by autopar.save_checkpoint (no {METADATA}), so it "
                           f"holds no optimizer state: load it without optimizer=, or pass a DCP checkpoint")
    load_safetensors(module, path)


def export_safetensors(module, path, *, config=None) -> str:
    """Write the full model to one safetensors file under its original names; every rank calls it, rank 0
    writes. ``path``: a ``.safetensors`` file, or a directory (``model.safetensors`` in it, and ``config``'s
    ``config.json`` when given, so ``from_pretrained(path)`` loads it). Returns the file's path."""
    _check_module(module, "export_safetensors")
    path = os.fspath(path)
    file = path if path.endswith(".safetensors") else os.path.join(path, SINGLE)
    rank0 = dist.get_rank() == 0
    entries = _export_entries(module)
    writer = None
    if rank0:
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        writer = StreamingWriter(file + ".partial", [(n, d, s) for n, d, s, _parts in entries])
    try:
        with torch.no_grad():
            for name, _dtype, _shape, parts in entries:
                full = _gathered(module, parts)  # a collective: every rank takes part
                if writer is not None:
                    writer.write(name, full)
                del full
    finally:
        if writer is not None:
            writer.close()
    if rank0:
        os.replace(file + ".partial", file)
        if config is not None:
            config.save_pretrained(os.path.dirname(os.path.abspath(file)))
    dist.barrier()
    return file


def _check_module(module, what: str) -> None:
    from autopar.runtime.parallel_module import ParallelModule

    if not isinstance(module, ParallelModule):
        raise AutoparError(f"{what} takes the module autoparallelize returned (a ParallelModule), got "
                           f"{type(module).__name__}: for a plain model use model.save_pretrained / from_pretrained")
    if not dist.is_initialized():
        raise AutoparError(f"{what} runs on every rank of the process group the module was made in, but none is "
                           f"initialised")


# ---- DCP ------------------------------------------------------------------------------------------
def _device_mesh(module):
    """A DeviceMesh over the module's ranks and mesh shape (made once per module: it creates groups)."""
    if getattr(module, "_dcp_mesh", None) is None:
        from torch.distributed.device_mesh import init_device_mesh

        module._dcp_mesh = init_device_mesh(module.mesh.device.type, tuple(module.mesh.mesh_shape))
    return module._dcp_mesh


def _dtensor(local: torch.Tensor, spec: ShardingSpec, shape, dmesh):
    from torch.distributed.tensor import DTensor

    if spec.partial:
        raise AutoparError(f"cannot checkpoint a tensor stored as a partial sum ({spec})")
    stride = torch.empty(tuple(shape), device="meta").stride()
    return DTensor.from_local(local, dmesh, spec.to_placements(dmesh.ndim), run_check=False,
                              shape=torch.Size(shape), stride=stride)


def _dcp_state(module, optimizer, metadata) -> dict:
    """The flat DCP state dict of ``module`` and ``optimizer``; with ``metadata`` (loading), the optimizer
    state is made from what the checkpoint holds, so a fresh optimizer can be loaded into."""
    dmesh = _device_mesh(module)
    state: dict[str, object] = {}
    for name, layout in module._params.items():
        state[f"model/{name}"] = _dtensor(module._attr(name).detach(), layout.spec, layout.shape, dmesh)
    if optimizer is None:
        return state
    for name, param in _optimized(module, optimizer):
        layout = module._params[name]
        if metadata is None:
            fields = optimizer.state.get(param, {})
        else:
            prefix = f"optim/{name}/"
            fields = {k[len(prefix):]: _placeholder(md) for k, md in metadata.items() if k.startswith(prefix)}
        for field, value in fields.items():
            if metadata is None:  # saving: a state tensor shaped like the local shard is laid out like it
                shaped = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape
            else:  # loading: a placeholder of the global size
                shaped = isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) == layout.shape
                if shaped:
                    value = torch.zeros(param.shape, dtype=value.dtype, device=param.device)
            state[f"optim/{name}/{field}"] = _dtensor(value.detach(), layout.spec, layout.shape, dmesh) if shaped \
                else value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state["optim/param_groups"] = io.BytesIO(pickle.dumps(groups)) if metadata is None else io.BytesIO()
    return state


def _placeholder(md):
    """A tensor to load a checkpoint entry into (its global size), or None for a pickled value."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if isinstance(md, TensorStorageMetadata):
        return torch.zeros(tuple(md.size), dtype=md.properties.dtype)
    return None


def _optimized(module, optimizer):
    """``(stored name, parameter)`` for every parameter of ``optimizer``, which must all be ``module``'s."""
    names = {id(p): n for n, p in module.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise AutoparError("the optimizer holds a parameter that is not the ParallelModule's: build it "
                                   "from module.parameters() of the module returned by autoparallelize")
            yield names[id(p)], p


def _load_dcp(module, path: str, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor

    reader = dcp.FileSystemReader(path)
    metadata = reader.read_metadata().state_dict_metadata
    _check_dcp(module, metadata, path, optimizer is not None)
    state = _dcp_state(module, optimizer, metadata)
    dcp.load(state, storage_reader=reader)
    with torch.no_grad():
        for name in module._params:
            target, loaded = module._attr(name), state[f"model/{name}"].to_local()
            if loaded.data_ptr() != target.data_ptr():
                target.copy_(loaded)
    if optimizer is None:
        return
    for name, param in _optimized(module, optimizer):
        prefix = f"optim/{name}/"
        optimizer.state[param] = {k[len(prefix):]: v.to_local() if isinstance(v, DTensor) else v
                                  for k, v in state.items() if k.startswith(prefix)}
    groups = state["optim/param_groups"]
    groups = pickle.loads(groups.getvalue()) if isinstance(groups, io.BytesIO) else groups
    if len(groups) != len(optimizer.param_groups):
        raise AutoparError(f"the checkpoint's optimizer has {len(groups)} parameter groups, this one "
                           f"{len(optimizer.param_groups)}: build the optimizer as it was when saved")
    for group, saved in zip(optimizer.param_groups, groups):
        group.update(saved)


def _check_dcp(module, metadata, path: str, with_optimizer: bool) -> None:
    """Missing or unexpected model keys and shape mismatches, all named in one error."""
    have = {k[len("model/"):]: tuple(md.size) for k, md in metadata.items()
            if k.startswith("model/") and hasattr(md, "size")}
    missing = sorted(n for n in module._params if n not in have)
    unexpected = sorted(n for n in have if n not in module._params)
    mismatched = [f"{n}: {have[n]} in the checkpoint, {layout.shape} in the model"
                  for n, layout in module._params.items() if n in have and have[n] != layout.shape]
    problems = [f"{what}: {', '.join(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if keys]
    if with_optimizer and "optim/param_groups" not in metadata:
        problems.append("no optimizer state (it was saved without optimizer=)")
    if problems:
        raise AutoparError(f"the checkpoint {path} does not fit this module: " + "; ".join(problems)
                           + ". Load it into the same model (any plan or mesh), or save a new one")


def _dcp_dir(path: str) -> str | None:
    """The complete DCP checkpoint at ``path``, or at ``path.old`` if a save died between its renames."""
    for candidate in (path, path + OLD):
        if os.path.isfile(os.path.join(candidate, METADATA)):
            return candidate
    return None


def _swap_in(path: str) -> None:
    """``path.saving`` becomes ``path``; the previous checkpoint stays loadable at every moment."""
    if os.path.isdir(path) and os.path.isdir(path + OLD):
        shutil.rmtree(path + OLD)  # path is complete (only a finished save is renamed to it)
    if os.path.exists(path):
        os.rename(path, path + OLD)
    os.rename(path + SAVING, path)
    shutil.rmtree(path + OLD, ignore_errors=True)


# ---- export -----------------------------------------------------------------------------------------
def _export_entries(module) -> list[tuple[str, torch.dtype, tuple[int, ...], list[str]]]:
    """``(original name, dtype, global shape, stored names)`` per tensor to export, in storage order."""
    persistent = getattr(module, "persistent_names", None)
    out, seen = [], set()
    for name, layout in module._params.items():
        piece = module._pieces.get(name)
        key = piece.original if piece is not None else layout.names[0]
        if key in seen or (persistent is not None and not any(n in persistent for n in (key, *layout.names))):
            continue
        seen.add(key)
        parts = sorted((p.start, n) for n, p in module._pieces.items() if p.original == key) if piece else [(0, name)]
        stored = [n for _s, n in parts]
        shape = list(layout.shape)
        if piece is not None:
            shape[piece.dim] = max(module._pieces[n].stop for n in stored)
        out.append((key, module._attr(name).dtype, tuple(shape), stored))
    return out


def _gathered(module, stored: list[str]) -> torch.Tensor:
    """The full tensor of one original name: each stored part gathered, pieces joined on their dim."""
    fulls = []
    for name in stored:
        layout = module._params[name]
        local = module._attr(name).detach()
        fulls.append(module._sc.apply(local, layout.spec, ShardingSpec.replicate(len(layout.shape)), layout.shape,
                                      module.mesh))
    if len(fulls) == 1:
        return fulls[0]
    return torch.cat(fulls, dim=module._pieces[stored[0]].dim)
