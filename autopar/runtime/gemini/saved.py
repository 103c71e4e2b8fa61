"""Saved tensors that view a chunk are saved as where they are in it, not as the tensor.

Autograd would otherwise keep the buffer a saved view points into alive after the chunk left the device
(the device memory would not come back) and read stale memory if the chunk came back elsewhere. Under
``saved_tensors_hooks(pack, unpack)`` (entered around each forward, gemini/__init__.py), a saved tensor
sharing a pinned chunk's parameter storage is packed as (chunk, storage offset, shape, stride); in
backward, unpacking it is a chunk event (``ChunkManager.backward_use``: the chunk back on the device,
pinned) and returns the same view of the buffer the chunk has now.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class InChunk:
    index: int  # the chunk
    offset: int  # elements into its parameter buffer
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def pack(manager, tensor: torch.Tensor):
    ptr = tensor.untyped_storage().data_ptr()
    for index in manager.pinned:  # an op saving a chunk's view runs while the chunk is pinned
        chunk = manager.chunks[index]
        if chunk.params.untyped_storage().data_ptr() == ptr:
            return InChunk(index, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
    return tensor


def unpack(manager, packed):
    if not isinstance(packed, InChunk):
        return packed
    manager.backward_use(packed.index)
    return manager.chunks[packed.index].params.as_strided(packed.shape, packed.stride, packed.offset)
