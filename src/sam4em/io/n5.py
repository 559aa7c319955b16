"""N5 volumes through tensorstore's n5 driver (zarr-python 3 no longer reads N5).

N5 lists dimensions, block sizes and resolutions x-first (x, y, z), the reverse of NumPy's
(z, y, x): tensorstore keeps the N5 order, so stores are transposed here, and resolutions
(``resolution`` with optional ``units``, or ``pixelResolution``) are reversed to (z, y, x).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.io.array import ArrayVolume
from sam4em.io.base import VolumeError, VoxelSize
from sam4em.io.metadata import JsonFileAttrs, read_json, voxel_size_from_attrs, write_json
from sam4em.io.tensorstore_array import TensorStoreArray, open_store

KEY_HINT = "name one as path.n5:KEY"
N5_VERSION = "4.0.0"
#: Keys of attributes.json that are N5's own metadata, not user attributes.
RESERVED = frozenset({"dimensions", "blockSize", "dataType", "compression", "n5"})
DTYPES = frozenset(
    {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}
)


def _attributes(folder: Path) -> dict[str, Any]:
    return read_json(folder / "attributes.json")


def _datasets(root: Path) -> list[str]:
    """Datasets (folders whose attributes.json has 'dimensions') below ``root``, as keys."""
    found: list[str] = []
    for folder, subfolders, files in os.walk(root):
        if "attributes.json" in files and "dimensions" in _attributes(Path(folder)):
            found.append(Path(folder).relative_to(root).as_posix())
            subfolders.clear()  # never walk a dataset's chunk folders: there can be millions
    return sorted(found)


def list_n5_datasets(path: Path) -> list[str]:
    """Keys of the datasets of an N5 container (``"."`` for a dataset at the root)."""
    return _datasets(path)


def _voxel_size(root: Path, dataset: Path) -> VoxelSize | None:
    """From the dataset's attributes, else from the nearest enclosing group's."""
    folder = dataset
    while True:
        found = voxel_size_from_attrs(_attributes(folder), xyz=True)
        if found is not None or folder == root:
            return found
        folder = folder.parent


def _spec(folder: Path) -> dict[str, Any]:
    return {"driver": "n5", "kvstore": {"driver": "file", "path": str(folder)}}


def open_n5(path: Path, key: str | None, writable: bool) -> ArrayVolume:
    """Open an N5 dataset as a (Z, Y, X) volume; ``key`` names it inside the container."""
    if key:
        key = key.strip("/")
        if "dimensions" not in _attributes(path / key):
            raise VolumeError(
                f"{path}: no dataset '{key}' (available: {', '.join(map(repr, _datasets(path))) or 'none'}); {KEY_HINT}"
            )
    elif "dimensions" not in _attributes(path):
        images = [k for k in _datasets(path) if len(_attributes(path / k)["dimensions"]) in (2, 3)]
        if len(images) != 1:
            problem = (
                "holds no 2D or 3D dataset"
                if not images
                else f"holds several datasets ({', '.join(map(repr, images))})"
            )
            raise VolumeError(f"{path}: {problem}; {KEY_HINT}")
        key = images[0]
    folder = path / key if key else path
    store = open_store(_spec(folder), writable=writable).T
    return ArrayVolume(
        TensorStoreArray(store),
        path,
        key,
        _voxel_size(path, folder),
        writable=writable,
        attrs_view=_attrs_view(folder, writable),
    )


def _attrs_view(folder: Path, writable: bool) -> Any:
    if writable:
        attrs = JsonFileAttrs(folder / "attributes.json", RESERVED)
        return lambda: attrs
    return lambda: {k: v for k, v in _attributes(folder).items() if k not in RESERVED}


def create_n5(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    key: str | None,
    chunks: tuple[int, int, int],
    voxel_size: VoxelSize | None,
    overwrite: bool,
    attrs: dict[str, Any],
) -> ArrayVolume:
    """Create a gzip-compressed N5 dataset at the root or at ``key``.

    The voxel size is written as ``resolution`` (x, y, z) with ``units`` ["nm", "nm", "nm"],
    the convention of BigDataViewer and n5-viewer.
    """
    if dtype.name not in DTYPES:
        raise VolumeError(f"{path}: N5 cannot store dtype {dtype} (use {', '.join(sorted(DTYPES))})")
    folder = path / key.strip("/") if key else path
    if key and folder.exists():
        if not overwrite:
            raise VolumeError(
                f"{path}: already holds '{key}' (pass overwrite=True / --overwrite to replace it)"
            )
        shutil.rmtree(folder)
    clash = RESERVED.intersection(attrs)
    if clash:
        raise VolumeError(f"{path}: attribute names {sorted(clash)} are N5 metadata (rename them)")
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {
        "dimensions": list(shape[::-1]),
        "blockSize": list(chunks[::-1]),
        "dataType": dtype.name,
        "compression": {"type": "gzip"},
    }
    store = open_store({**_spec(folder), "metadata": metadata}, writable=True, create=True).T
    extra: dict[str, Any] = dict(attrs)
    if voxel_size is not None:
        extra.update(resolution=list(voxel_size[::-1]), units=["nm", "nm", "nm"])
    write_json(folder / "attributes.json", {**_attributes(folder), **extra})
    write_json(path / "attributes.json", {**_attributes(path), "n5": N5_VERSION})
    return ArrayVolume(
        TensorStoreArray(store), path, key, voxel_size, writable=True, attrs_view=_attrs_view(folder, True)
    )
