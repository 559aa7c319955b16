"""A toy volume format, written the way a new format is added: this one module plus one table entry.

A volume is one NumPy ``.npy`` file, memory-mapped (so it reads and writes region by region); its
attributes and voxel size live in a ``<file>.attrs.json`` sidecar. The entry, ``NPY_FORMAT``, is
registered by the tests that use it (``register_format(NPY_FORMAT)``), not on import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam4em.io.array import ArrayVolume
from sam4em.io.base import Volume, WritableVolume
from sam4em.io.formats import CreateRequest, OpenRequest, VolumeFormat
from sam4em.io.metadata import JsonFileAttrs, as_voxel_size, read_json, sidecar_path, write_json

VOXEL_SIZE_KEY = "voxel_size_nm"
_RESERVED = frozenset({VOXEL_SIZE_KEY})


def _user_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _RESERVED}


def open_npy(request: OpenRequest) -> Volume:
    """Open a (Z, Y, X) or (Y, X) ``.npy`` file as a volume, memory-mapped."""
    array = np.load(request.path, mmap_mode="r+" if request.writable else "r")
    sidecar = sidecar_path(request.path)
    meta = read_json(sidecar)
    attrs: Any = JsonFileAttrs(sidecar, _RESERVED) if request.writable else _user_attrs(meta)
    return ArrayVolume(
        array,
        request.path,
        None,
        as_voxel_size(meta.get(VOXEL_SIZE_KEY)),
        writable=request.writable,
        attrs_view=lambda: attrs,
        on_close=array.flush if request.writable else None,
    )


def create_npy(request: CreateRequest) -> WritableVolume:
    """Create a zero-filled ``.npy`` file of ``request.shape``; attributes go to the sidecar."""
    array = np.lib.format.open_memmap(request.path, mode="w+", dtype=request.dtype, shape=request.shape)
    meta = dict(request.attrs)
    if request.voxel_size is not None:
        meta[VOXEL_SIZE_KEY] = list(request.voxel_size)
    write_json(sidecar_path(request.path), meta)
    attrs = JsonFileAttrs(sidecar_path(request.path), _RESERVED)
    return ArrayVolume(
        array, request.path, None, request.voxel_size, writable=True, attrs_view=lambda: attrs, on_close=array.flush
    )


NPY_FORMAT = VolumeFormat(
    name="npy",
    suffixes=(".npy",),
    container=False,
    writable=True,
    multi_writer_safe=False,
    open=open_npy,
    create=create_npy,
    describe="NumPy .npy files",
)
