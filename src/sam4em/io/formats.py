"""The table of volume formats: one ``VolumeFormat`` entry per format, in ``FORMATS``.

Path detection (:mod:`sam4em.io.paths`), ``open_volume``/``create_volume`` dispatch
(:mod:`sam4em.io.api`) and help texts all read this table, so adding a format takes one module
(its open/create functions) and one ``register_format(VolumeFormat(...))`` call.

Entries point at their modules through small adapters that import the module on first use:
``import sam4em.io`` stays cheap, and a missing optional library only matters for the format
that needs it. The table's order is the order in which folders are recognised by their
contents (a folder of slices is the last resort).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.io.base import Volume, VolumeError, VoxelSize, WritableVolume
from sam4em.io.slices import SLICE_SUFFIXES, slice_files


@dataclass(frozen=True)
class OpenRequest:
    """What ``open_volume`` asks of a format: an existing ``path`` (scheme stripped), opened read-only
    unless ``writable``; ``key`` names an array in a container (always None for single-volume formats)."""

    path: Path
    key: str | None
    writable: bool
    #: Zarr only: read missing chunks as the fill value (with a warning) instead of failing.
    allow_missing_chunks: bool = True


@dataclass(frozen=True)
class CreateRequest:
    """What ``create_volume`` asks of a format, checked: a (Z, Y, X) ``shape`` of positive sizes,
    a supported native ``dtype``, ``chunks`` no larger than ``shape``, ``voxel_size`` (z, y, x) in nm.

    The path's parent exists; ``path`` itself does not, unless ``key`` adds to an existing container.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    key: str | None
    chunks: tuple[int, int, int]
    voxel_size: VoxelSize | None
    overwrite: bool
    attrs: dict[str, Any]


@dataclass(frozen=True)
class VolumeFormat:
    """One file format: how paths name it and which functions read and write it."""

    #: Short name ('tiff', 'zarr', ...), used in messages and run records.
    name: str
    #: Lower-case file extensions that mark the format when reading ('.tif', ...).
    suffixes: tuple[str, ...]
    #: Holds several arrays named by a key (``vol.h5:raw``); else ``open``/``create`` get key None.
    container: bool
    #: ``open_volume(..., mode="r+")`` may write in place.
    writable: bool
    #: Several processes may write disjoint blocks of one output at once (distributed segmentation).
    multi_writer_safe: bool
    #: Opens an existing volume.
    open: Callable[[OpenRequest], Volume]
    #: Creates a new volume; None for read-only formats.
    create: Callable[[CreateRequest], WritableVolume] | None
    #: Plural noun phrase for messages and help: 'TIFF files', 'Zarr stores', ...
    describe: str
    #: What ``create_volume`` writes, when it differs from what is read ('folders of .tif slices');
    #: None means ``describe``.
    write_describe: str | None = None
    #: Extensions ``create_volume`` writes this format for ('' = a path without extension);
    #: None means ``suffixes``.
    write_suffixes: tuple[str, ...] | None = None
    #: URL-like prefix naming the format ('precomputed://'), stripped before ``open``.
    scheme: str | None = None
    #: Holds OME-Zarr (NGFF) images, so a segmentation output may be written as one (pyramids,
    #: ``labels/<class>``; see :mod:`sam4em.io.ome_zarr_output`).
    ome_ngff: bool = False
    #: Whether ``create`` can store a dtype (by name, 'float16'); None: any numpy dtype.
    stores_dtype: Callable[[str], bool] | None = None
    #: Recognises a folder without a known extension by what it holds.
    detect: Callable[[Path], bool] | None = None
    #: The keys of the volumes inside a container (each opens with ``open_volume(path, key)``).
    list_keys: Callable[[Path], list[str]] | None = None
    #: Deletes an existing output before ``create_volume(..., overwrite=True)`` replaces it;
    #: None deletes the file (and its attrs sidecar) or the folder.
    remove: Callable[[Path], None] | None = None

    def creates_suffix(self, suffix: str) -> bool:
        """Whether ``create_volume`` writes this format for a path ending in ``suffix`` ('' = none)."""
        names = self.suffixes if self.write_suffixes is None else self.write_suffixes
        return self.create is not None and suffix in names

    @property
    def output_suffixes(self) -> tuple[str, ...]:
        """Extensions under which this format can hold a segmentation output: ``create_volume`` writes
        them, and ``open_volume`` recognises them and reopens them to write (resume, several writers)."""
        return tuple(s for s in self.suffixes if self.writable and self.creates_suffix(s))


#: Every known format by name, in the order folders are recognised by their contents.
FORMATS: dict[str, VolumeFormat] = {}


def register_format(fmt: VolumeFormat) -> VolumeFormat:
    """Add ``fmt`` to ``FORMATS`` (before the slice-folder fallback); refuses a name or an
    extension another format already claims. Returns ``fmt``."""
    if fmt.name in FORMATS:
        raise ValueError(f"volume format {fmt.name!r} is already registered (pick another name)")
    for other in FORMATS.values():
        taken = set(fmt.suffixes) & set(other.suffixes)
        if taken:
            raise ValueError(
                f"volume format {fmt.name!r}: extension {sorted(taken)[0]!r} already belongs to {other.name!r}"
            )
    fallback = FORMATS.pop(_IMAGES, None)
    FORMATS[fmt.name] = fmt
    if fallback is not None:
        FORMATS[_IMAGES] = fallback
    return fmt


def suffix_of(path: str | os.PathLike[str]) -> str:
    """The lower-case extension of a file or folder ('' when it has none)."""
    return Path(os.fspath(path).rstrip("/\\")).suffix.lower()


def format_for_suffix(suffix: str) -> VolumeFormat | None:
    """The format that reads files ending in ``suffix`` (lower case), or None."""
    return next((fmt for fmt in FORMATS.values() if suffix in fmt.suffixes), None)


def scheme_of(path: str | os.PathLike[str]) -> str | None:
    """The URL-like prefix of a format that ``path`` starts with (``precomputed://``), else None."""
    spec = os.fspath(path)
    return next((f.scheme for f in FORMATS.values() if f.scheme and spec.startswith(f.scheme)), None)


def has_scheme(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a volume by a format's scheme (``precomputed://...``): no local file path."""
    return scheme_of(path) is not None


def format_for_path(path: str | os.PathLike[str]) -> VolumeFormat:
    """The format that reads ``path``: by scheme (``precomputed://``), by extension, else, for a
    folder, by what it holds. Raises VolumeError (one line) when no format matches."""
    spec = os.fspath(path)
    scheme = scheme_of(spec)
    if scheme is not None:
        return next(fmt for fmt in FORMATS.values() if fmt.scheme == scheme)
    suffix = suffix_of(spec)
    by_suffix = format_for_suffix(suffix)
    if by_suffix is not None:
        return by_suffix
    target = Path(spec)
    if target.is_dir():
        for fmt in FORMATS.values():
            if fmt.detect is not None and fmt.detect(target):
                return fmt
        others = [f.describe for f in FORMATS.values() if f.detect is not None and f.name != _IMAGES]
        raise VolumeError(
            f"{spec.rstrip('/')}/: folder holds no .png/.tif images (nor {', '.join(others)}; "
            "point at the folder that holds the volume)"
        )
    raise VolumeError(
        f"{spec}: unknown format {suffix or '(no extension)'!r} (supported: {supported_suffixes_help()})"
    )


def format_for_writing(path: Path) -> VolumeFormat:
    """The format ``create_volume`` writes for ``path``: by extension, a folder of slices if none."""
    suffix = suffix_of(path)
    fmt = next((f for f in FORMATS.values() if f.creates_suffix(suffix)), None)
    if fmt is None:
        raise VolumeError(
            f"{path}: cannot write format {suffix or '(no extension)'!r} "
            f"(use {supported_suffixes_help(writing=True)})"
        )
    return fmt


def _suffix_list(suffixes: tuple[str, ...], scheme: str | None) -> str:
    names = [s or "no extension" for s in suffixes] + ([f"{scheme}folder"] if scheme else [])
    return "/".join(names)


def supported_suffixes_help(*, writing: bool = False) -> str:
    """The formats and their extensions, for help texts and errors: 'TIFF files (.tif/.tiff), ...'.

    ``writing`` lists what ``create_volume`` writes instead of what ``open_volume`` reads.
    """
    parts = []
    for fmt in FORMATS.values():
        if writing and fmt.create is None:
            continue
        suffixes = fmt.suffixes if not writing or fmt.write_suffixes is None else fmt.write_suffixes
        describe = (fmt.write_describe or fmt.describe) if writing else fmt.describe
        parts.append(f"{describe} ({_suffix_list(suffixes, None if writing else fmt.scheme)})")
    return ", ".join(parts)


def output_suffixes_help() -> str:
    """The formats a segmentation output may have (``VolumeFormat.output_suffixes``), for help texts:
    'TIFF files (.tif/.tiff), HDF5 files (.h5/.hdf5/.hdf), ...'."""
    return ", ".join(
        f"{fmt.write_describe or fmt.describe} ({_suffix_list(fmt.output_suffixes, None)})"
        for fmt in FORMATS.values()
        if fmt.output_suffixes
    )


# Built-in formats. Each adapter imports its module on first use (see the module docstring).


def _open_tiff(request: OpenRequest) -> Volume:
    from sam4em.io.tiff import open_tiff

    return open_tiff(request.path, request.writable)


def _create_tiff(request: CreateRequest) -> WritableVolume:
    from sam4em.io.tiff import create_tiff

    return create_tiff(request.path, request.shape, request.dtype, request.voxel_size, request.attrs)


def _open_hdf5(request: OpenRequest) -> Volume:
    from sam4em.io.hdf5 import open_hdf5

    return open_hdf5(request.path, request.key, request.writable)


def _create_hdf5(r: CreateRequest) -> WritableVolume:
    from sam4em.io.hdf5 import create_hdf5

    return create_hdf5(r.path, r.shape, r.dtype, r.key, r.chunks, r.voxel_size, r.overwrite, r.attrs)


def _list_hdf5(path: Path) -> list[str]:
    from sam4em.io.hdf5 import list_hdf5_datasets

    return list_hdf5_datasets(path)


def _is_zarr(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def _open_zarr(request: OpenRequest) -> Volume:
    from sam4em.io.zarr_store import open_zarr

    return open_zarr(request.path, request.key, request.writable, allow_missing_chunks=request.allow_missing_chunks)


def _create_zarr(r: CreateRequest) -> WritableVolume:
    from sam4em.io.zarr_store import create_zarr

    return create_zarr(r.path, r.shape, r.dtype, r.key, r.chunks, r.voxel_size, r.overwrite, r.attrs)


def _list_zarr(path: Path) -> list[str]:
    from sam4em.io.zarr_store import list_zarr_images

    return list_zarr_images(path)


def _is_precomputed(folder: Path) -> bool:
    return (folder / "info").exists()


def _open_precomputed(request: OpenRequest) -> Volume:
    from sam4em.io.precomputed import open_precomputed

    return open_precomputed(request.path, request.key)


def _is_n5(folder: Path) -> bool:
    return (folder / "attributes.json").exists()


def _open_n5(request: OpenRequest) -> Volume:
    from sam4em.io.n5 import open_n5

    return open_n5(request.path, request.key, request.writable)


def _n5_stores(dtype: str) -> bool:
    from sam4em.io.n5 import DTYPES

    return dtype in DTYPES


def _mrc_stores(dtype: str) -> bool:
    from sam4em.io.mrc import MODES

    return dtype in MODES


def _create_n5(r: CreateRequest) -> WritableVolume:
    from sam4em.io.n5 import create_n5

    return create_n5(r.path, r.shape, r.dtype, r.key, r.chunks, r.voxel_size, r.overwrite, r.attrs)


def _list_n5(path: Path) -> list[str]:
    from sam4em.io.n5 import list_n5_datasets

    return list_n5_datasets(path)


def _open_mrc(request: OpenRequest) -> Volume:
    from sam4em.io.mrc import open_mrc

    return open_mrc(request.path, request.writable)


def _create_mrc(request: CreateRequest) -> WritableVolume:
    from sam4em.io.mrc import create_mrc

    return create_mrc(request.path, request.shape, request.dtype, request.voxel_size, request.attrs)


def _has_slices(folder: Path) -> bool:
    return bool(slice_files(folder))


def _open_images(request: OpenRequest) -> Volume:
    from sam4em.io.image_folder import open_images

    return open_images(request.path)


def _create_folder(request: CreateRequest) -> WritableVolume:
    from sam4em.io.image_folder import create_folder

    return create_folder(request.path, request.shape, request.dtype, request.voxel_size, request.attrs)


def _remove_slice_folder(path: Path) -> None:
    """Delete a folder of slices written before, refusing one that holds anything else."""
    if not path.is_dir():
        path.unlink()
        return
    stray = [p.name for p in path.iterdir() if p.suffix.lower() not in SLICE_SUFFIXES and p.name != "attrs.json"]
    if stray:
        raise VolumeError(
            f"{path}/: holds files other than slices ({', '.join(sorted(stray)[:3])}); "
            "refusing to delete it (remove it yourself or pick another path)"
        )
    shutil.rmtree(path)


_IMAGES = "images"
#: Prefix of a neuroglancer precomputed volume's path: ``precomputed://folder``.
PRECOMPUTED_SCHEME = "precomputed://"

for _fmt in (
    VolumeFormat(
        name="tiff", suffixes=(".tif", ".tiff"), container=False, writable=True, multi_writer_safe=False,
        open=_open_tiff, create=_create_tiff, describe="TIFF files",
    ),
    VolumeFormat(
        name="hdf5", suffixes=(".h5", ".hdf5", ".hdf"), container=True, writable=True, multi_writer_safe=False,
        open=_open_hdf5, create=_create_hdf5, describe="HDF5 files", list_keys=_list_hdf5,
    ),
    VolumeFormat(
        name="zarr", suffixes=(".zarr",), container=True, writable=True, multi_writer_safe=True,
        open=_open_zarr, create=_create_zarr, describe="Zarr stores", ome_ngff=True,
        detect=_is_zarr, list_keys=_list_zarr,
    ),
    VolumeFormat(
        name="precomputed", suffixes=(), container=True, writable=False, multi_writer_safe=False,
        open=_open_precomputed, create=None, describe="neuroglancer precomputed folders",
        scheme=PRECOMPUTED_SCHEME, detect=_is_precomputed,
    ),
    VolumeFormat(
        name="n5", suffixes=(".n5",), container=True, writable=True, multi_writer_safe=True,
        open=_open_n5, create=_create_n5, describe="N5 stores", detect=_is_n5, list_keys=_list_n5,
        stores_dtype=_n5_stores,
    ),
    VolumeFormat(
        name="mrc", suffixes=(".mrc", ".rec", ".map", ".mrcs"), container=False, writable=True,
        multi_writer_safe=False, open=_open_mrc, create=_create_mrc, describe="MRC files",
        stores_dtype=_mrc_stores,
    ),
    VolumeFormat(
        name=_IMAGES, suffixes=(".png",), container=False, writable=False, multi_writer_safe=False,
        open=_open_images, create=_create_folder, describe="folders of .png/.tif slices or PNG images",
        write_describe="folders of .tif slices", write_suffixes=("",), detect=_has_slices,
        remove=_remove_slice_folder,
    ),
):  # fmt: skip
    register_format(_fmt)
