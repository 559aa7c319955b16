"""``open_volume`` and ``create_volume``: one entry point for every format.

Format modules are imported on first use, so ``import sam4em.io`` stays cheap and a
missing optional library only matters for the format that needs it.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from sam4em.io.base import Volume, VolumeError, VoxelSize, WritableVolume, check_dtype, corrupt_error
from sam4em.io.formats import CreateRequest, OpenRequest, VolumeFormat, format_for_writing
from sam4em.io.metadata import sidecar_path
from sam4em.io.paths import detect_format, parse_path_key

#: Default chunks: one slice deep, because SAM-style models read volumes slice by slice.
_CHUNK_YX = 512


def open_volume(
    path: str | os.PathLike[str], key: str | None = None, mode: str = "r", *, allow_missing_chunks: bool = True
) -> Volume:
    """Open a volume lazily as a (Z, Y, X) array-like; only the voxels indexed are read.

    ``path`` is a file or folder (format by extension or contents), ``precomputed://folder``,
    or a string ``"vol.h5:raw"`` carrying the key (see ``parse_path_key``) when ``key`` is None.
    ``key`` names the dataset/array inside HDF5, Zarr and N5 containers (or a precomputed
    scale). ``mode="r"`` never opens the file for writing; ``mode="r+"`` allows writing in
    place for HDF5, Zarr, N5, MRC and uncompressed TIFF. RGB(A) images read as luminance,
    with a warning. A read-only Zarr array with chunks missing from the store (read as the fill
    value) warns with ``MissingChunksWarning`` on its first read, or raises VolumeError there when
    ``allow_missing_chunks`` is False (open labels so: a lost chunk must not become background).
    Raises VolumeError (one line: file, problem, fix) for any bad input.
    """
    if mode not in ("r", "r+"):
        raise VolumeError(f"{path}: unknown mode {mode!r} (use 'r' to read, 'r+' to read and write)")
    spec = os.fspath(path)
    if key is None:
        spec, key = parse_path_key(spec)
    fmt, target = detect_format(spec)
    writable = mode == "r+"
    if key and not fmt.container:
        raise VolumeError(f"{target}: {fmt.describe} hold one volume; drop the key '{key}'")
    if writable and not fmt.writable:
        raise VolumeError(f"{target}: {fmt.name} volumes open read-only (use create_volume to write a copy)")
    try:
        volume = fmt.open(OpenRequest(target, key or None, writable, allow_missing_chunks))
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        # Each library reports bad bytes its own way (OSError, KeyError, struct.error, ...).
        raise corrupt_error(target, exc) from exc
    if getattr(volume, "converts_rgb", False):
        warnings.warn(
            f"{target}: RGB(A) image; reading its luminance as gray values", UserWarning, stacklevel=2
        )
    return volume


def list_volumes(path: str | os.PathLike[str]) -> list[str]:
    """The keys of the 2D/3D volumes inside an HDF5, Zarr or N5 container, sorted; ``[]`` for other formats.

    Each key opens with ``open_volume(path, key)``; OME-Zarr images are listed by their group.
    """
    fmt, target = detect_format(os.fspath(path))
    if fmt.list_keys is None:
        return []
    try:
        return fmt.list_keys(target)
    except VolumeError:
        raise
    except Exception as exc:
        raise corrupt_error(target, exc) from exc


def _positive_ints(values: Any, what: str, path: Path) -> tuple[int, int, int]:
    try:
        items = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or min(items) < 1:
        raise VolumeError(f"{path}: {what} must be 3 positive integers (z, y, x), got {values!r}")
    return items[0], items[1], items[2]


def _voxel_size(values: Any, path: Path) -> VoxelSize | None:
    if values is None:
        return None
    try:
        sizes = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise VolumeError(f"{path}: voxel_size must be 3 positive numbers in nm (z, y, x), got {values!r}")
    return sizes[0], sizes[1], sizes[2]


def _remove(path: Path, fmt: VolumeFormat) -> None:
    """Delete an existing output before overwriting it: the format's own way, else the file
    (and its attrs sidecar) or the folder."""
    if fmt.remove is not None:
        fmt.remove(path)
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        sidecar_path(path).unlink(missing_ok=True)
        path.unlink()


def create_volume(
    path: str | os.PathLike[str],
    shape: tuple[int, int, int],
    dtype: Any,
    key: str | None = None,
    chunks: tuple[int, int, int] | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    attrs: dict[str, Any] | None = None,
) -> WritableVolume:
    """Create a (Z, Y, X) volume to fill region by region; ``close()`` it when done.

    Format by extension: .tif/.tiff (uncompressed ImageJ or OME-TIFF, memory-mapped),
    .h5/.hdf5/.hdf (dataset ``key``, default 'raw'), .zarr (OME-Zarr 0.5, zarr v3; image at
    ``key`` or the root), .n5 (dataset ``key`` or the root), .mrc/.rec/.map/.mrcs; a path
    without extension is a folder of ``0000.tif ...`` slices. ``chunks`` (z, y, x) applies to
    chunked formats; default (1, 512, 512). ``voxel_size`` is (z, y, x) in nm. ``attrs`` go
    to the format's attributes, or a JSON sidecar where it has none. An existing path is
    only replaced with ``overwrite=True``; a key adds to an existing container.
    """
    target = Path(path)
    fmt = format_for_writing(target)
    if key and not fmt.container:
        raise VolumeError(f"{target}: {fmt.describe} hold one volume; drop the key '{key}'")
    size = _positive_ints(shape, "shape", target)
    dt = check_dtype(dtype, target)
    sizes = _voxel_size(voxel_size, target)
    default = (1, _CHUNK_YX, _CHUNK_YX)
    block = _positive_ints(chunks if chunks is not None else default, "chunks", target)
    block = (min(block[0], size[0]), min(block[1], size[1]), min(block[2], size[2]))
    extra = dict(attrs or {})
    adding = bool(key) and target.exists()
    if target.exists() and not adding:
        if not overwrite:
            raise VolumeError(f"{target}: already exists (pass overwrite=True / --overwrite to replace it)")
        _remove(target, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        create = fmt.create
        assert create is not None  # format_for_writing returns only formats that create
        return create(CreateRequest(target, size, dt, key or None, block, sizes, overwrite, extra))
    except (VolumeError, MemoryError):
        raise
    except OSError as exc:
        raise VolumeError(f"{target}: cannot write file ({exc})") from exc
