"""MRC volumes (.mrc, .rec, .map, .mrcs) through mrcfile, memory-mapped.

The header's voxel size is in ångström, x-first; volumes report it in nm, (z, y, x).
Mode 0 is signed bytes in the MRC2014 standard, but IMOD (the most common writer of EM
tomograms) stores unsigned bytes there unless bit 0 of its flags says otherwise: files
stamped by IMOD are read as uint8 accordingly, and uint8 volumes are written that way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from sam4em.io.array import ArrayVolume
from sam4em.io.base import VolumeError, VoxelSize
from sam4em.io.metadata import JsonFileAttrs, as_voxel_size, read_json, sidecar_path

IMOD_STAMP = 1146047817
_IMOD_OFFSET = 40  # byte offset of imodStamp, then imodFlags, inside the header's extra2 field
MODES = {"int8": 0, "uint8": 0, "int16": 1, "float32": 2, "uint16": 6, "float16": 12}


def _imod_words(mrc: Any) -> np.ndarray:
    raw = bytes(mrc.header.extra2)[_IMOD_OFFSET : _IMOD_OFFSET + 8]
    return np.frombuffer(raw, dtype=mrc.header.mode.dtype)


def _unsigned_bytes(mrc: Any) -> bool:
    stamp, flags = _imod_words(mrc)
    return int(mrc.header.mode) == 0 and int(stamp) == IMOD_STAMP and not int(flags) & 1


def _voxel_size(mrc: Any) -> VoxelSize | None:
    size = mrc.voxel_size
    # Divide Python floats: float32 ångström times 0.1 would give 4.6000000000000005 nm for 46 Å.
    return as_voxel_size([float(size.x) / 10, float(size.y) / 10, float(size.z) / 10], reverse=True)


def _attrs_view(attrs: JsonFileAttrs, path: Path, writable: bool) -> Callable[[], Mapping[str, Any]]:
    """The live sidecar when writable, else a fresh snapshot of it at each read."""
    if writable:
        return lambda: attrs
    return lambda: read_json(sidecar_path(path))


def _volume(mrc: Any, path: Path, writable: bool) -> ArrayVolume:
    data = mrc.data
    if data is None:
        raise VolumeError(f"{path}: cannot read file (corrupt or truncated: header and file size disagree)")
    if _unsigned_bytes(mrc):
        data = data.view(np.uint8)
    attrs = JsonFileAttrs(sidecar_path(path))

    def close() -> None:
        if writable:
            _update_stats(mrc, data)
        mrc.close()

    return ArrayVolume(
        data,
        path,
        None,
        _voxel_size(mrc),
        writable=writable,
        attrs_view=_attrs_view(attrs, path, writable),
        on_close=close,
    )


def _update_stats(mrc: Any, data: np.ndarray) -> None:
    """Header min/max/mean/rms, which viewers use for contrast; computed on the stored values."""
    if data.size:
        mrc.header.dmin = data.min()
        mrc.header.dmax = data.max()
        mrc.header.dmean = data.mean(dtype=np.float64)
        mrc.header.rms = data.std(dtype=np.float64)


def open_mrc(path: Path, writable: bool) -> ArrayVolume:
    """Open an MRC file as a (Z, Y, X) volume (2D images as one slice)."""
    # permissive: many EM files have slightly non-standard headers; real problems surface as data None.
    mrc = mrcfile.mmap(path, mode="r+" if writable else "r", permissive=True)
    try:
        return _volume(mrc, path, writable)
    except BaseException:
        mrc.close()
        raise


def create_mrc(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    voxel_size: VoxelSize | None,
    attrs: dict[str, Any],
) -> ArrayVolume:
    """Create a memory-mapped MRC file; ``attrs`` go to a ``<file>.attrs.json`` sidecar."""
    if dtype.name not in MODES:
        raise VolumeError(f"{path}: MRC cannot store dtype {dtype} (use {', '.join(MODES)})")
    mrc = mrcfile.new_mmap(path, shape=shape, mrc_mode=MODES[dtype.name], overwrite=True)
    try:
        if voxel_size is not None:
            z, y, x = voxel_size
            mrc.voxel_size = (x * 10.0, y * 10.0, z * 10.0)
        if dtype == np.uint8:
            extra = bytearray(bytes(mrc.header.extra2))
            words = np.array([IMOD_STAMP, 0], dtype=mrc.header.mode.dtype)
            extra[_IMOD_OFFSET : _IMOD_OFFSET + 8] = words.tobytes()
            mrc.header.extra2 = bytes(extra)
        if attrs:
            JsonFileAttrs(sidecar_path(path)).update(attrs)
        return _volume(mrc, path, writable=True)
    except BaseException:
        mrc.close()
        raise
