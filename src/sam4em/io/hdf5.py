"""HDF5 volumes (.h5, .hdf5, .hdf) through h5py; ``key`` names the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sam4em.io.array import ArrayVolume
from sam4em.io.base import VolumeError, VoxelSize
from sam4em.io.metadata import to_python, voxel_size_from_attrs

#: Dataset name used when ``create_volume`` gets no key (the CREMI/EM convention).
DEFAULT_KEY = "raw"
KEY_HINT = "name one as path.h5:KEY"


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    group.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def list_hdf5_datasets(path: Path) -> list[str]:
    """Keys of the 2D and 3D datasets of an HDF5 file."""
    with h5py.File(path, "r") as f:
        return sorted(d.name.lstrip("/") for d in _datasets(f) if d.ndim in (2, 3))


def _listing(datasets: list[h5py.Dataset]) -> str:
    return ", ".join(repr(d.name.lstrip("/")) for d in datasets) or "none"


def _find_dataset(f: h5py.File, path: Path, key: str | None) -> h5py.Dataset:
    """The dataset named by ``key``, or the only 2D/3D dataset of the file when key is None."""
    if key is None:
        images = [d for d in _datasets(f) if d.ndim in (2, 3)]
        if len(images) == 1:
            return images[0]
        if not images:
            raise VolumeError(f"{path}: holds no 2D or 3D dataset (datasets: {_listing(_datasets(f))})")
        raise VolumeError(f"{path}: holds several datasets ({_listing(images)}); {KEY_HINT}")
    node = f.get(key)
    if isinstance(node, h5py.Dataset):
        return node
    if isinstance(node, h5py.Group):
        raise VolumeError(
            f"{path}: '{key}' is a group, not a dataset (datasets in it: {_listing(_datasets(node))}); {KEY_HINT}"
        )
    raise VolumeError(f"{path}: no dataset '{key}' (available: {_listing(_datasets(f))}); {KEY_HINT}")


def _own_voxel_size(node: h5py.Dataset | h5py.Group) -> VoxelSize | None:
    return voxel_size_from_attrs({k: to_python(v) for k, v in node.attrs.items()})


def _voxel_size(ds: h5py.Dataset) -> VoxelSize | None:
    """From the dataset's attributes, else the nearest enclosing group's, else its siblings'.

    Siblings count only when every same-shape dataset of the group that states a voxel size
    states the same one: label volumes are often stored without attributes next to their
    raw data (e.g. the Drosophila VNC file's ``labels`` beside ``raw``).
    """
    node: h5py.Dataset | h5py.Group = ds
    while True:
        found = _own_voxel_size(node)
        if found is not None:
            return found
        if node.name == "/":
            break
        node = node.parent
    siblings = [d for d in ds.parent.values() if isinstance(d, h5py.Dataset) and d.shape == ds.shape]
    stated = {size for size in map(_own_voxel_size, siblings) if size is not None}
    return stated.pop() if len(stated) == 1 else None


def open_hdf5(path: Path, key: str | None, writable: bool) -> ArrayVolume:
    """Open a dataset as a (Z, Y, X) volume; 2D datasets are one-slice volumes."""
    f = h5py.File(path, "r+" if writable else "r")
    try:
        ds = _find_dataset(f, path, key)
        return ArrayVolume(
            ds,
            path,
            ds.name.lstrip("/"),
            _voxel_size(ds),
            writable=writable,
            attrs_view=(lambda: ds.attrs)
            if writable
            else (lambda: {k: to_python(v) for k, v in ds.attrs.items()}),
            on_close=f.close,
        )
    except BaseException:
        f.close()
        raise


def create_hdf5(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    key: str | None,
    chunks: tuple[int, int, int],
    voxel_size: VoxelSize | None,
    overwrite: bool,
    attrs: dict[str, Any],
) -> ArrayVolume:
    """Create a chunked, gzip-compressed dataset; voxel size goes to attribute ``resolution_nm``.

    With a key, an existing file is kept and the dataset added (replacing a dataset of that
    name only when ``overwrite``); without one, the file is new.
    """
    name = key or DEFAULT_KEY
    add = key is not None and path.exists()
    f = h5py.File(path, "a" if add else "w")
    try:
        if name in f:
            if not overwrite:
                raise VolumeError(
                    f"{path}: already holds '{name}' (pass overwrite=True / --overwrite to replace it)"
                )
            del f[name]
        # gzip level 1: most of the size gain of higher levels at a fraction of the write time.
        ds = f.create_dataset(
            name, shape=shape, dtype=dtype, chunks=chunks, compression="gzip", compression_opts=1
        )
        if voxel_size is not None:
            ds.attrs["resolution_nm"] = np.asarray(voxel_size, dtype=np.float64)
        ds.attrs.update(attrs)
        return ArrayVolume(
            ds, path, name, voxel_size, writable=True, attrs_view=lambda: ds.attrs, on_close=f.close
        )
    except BaseException:
        f.close()
        raise
