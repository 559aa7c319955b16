"""Zarr volumes (v2 and v3 arrays and groups, OME-Zarr images) through zarr-python 3.

Reading: ``key`` names an array or an OME-Zarr image group inside a group; an OME-Zarr
image reads its scale 0, with the voxel size from that scale's transform. Writing: an
OME-Zarr 0.5 image (zarr v3) whose scale-0 array is ``<key>/0``, axes z, y, x in nanometres.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sam4em.io.array import ArrayVolume
from sam4em.io.base import MissingChunksWarning, VolumeError, VoxelSize
from sam4em.io.metadata import nm_per_unit, voxel_size_from_attrs

KEY_HINT = "name one as path.zarr:KEY"
_OME_KEYS = frozenset({"ome", "multiscales"})


def _multiscale(group: zarr.Group) -> dict[str, Any] | None:
    """The first OME-Zarr multiscale of a group (0.5 under 'ome', 0.4 and older at top level)."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    if isinstance(found, list) and found and isinstance(found[0], dict):
        datasets = found[0].get("datasets")
        if (
            isinstance(datasets, list)
            and datasets
            and isinstance(datasets[0], dict)
            and "path" in datasets[0]
        ):
            return found[0]
    return None


def _scale(transforms: Any, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms if isinstance(transforms, list) else []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    return scale


def _ome_voxel_size(multiscale: dict[str, Any], dataset: dict[str, Any]) -> VoxelSize | None:
    """Voxel size of one dataset from its scale transforms; None unless z, y and x all carry a unit."""
    axes = multiscale.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, dict) for a in axes):
        return None  # OME-Zarr 0.3 and older name axes without units
    ndim = len(axes)
    scale = _scale(dataset.get("coordinateTransformations"), ndim)
    scale = [
        a * b for a, b in zip(scale, _scale(multiscale.get("coordinateTransformations"), ndim), strict=True)
    ]
    sizes: dict[str, float] = {}
    for axis, value in zip(axes, scale, strict=True):
        factor = nm_per_unit(axis.get("unit"))
        if axis.get("name") in ("z", "y", "x") and factor:
            sizes[axis["name"]] = value * factor
    if len(sizes) != 3:
        return None
    return sizes["z"], sizes["y"], sizes["x"]


def _level_voxel_size(root: zarr.Group | zarr.Array, key: str | None) -> VoxelSize | None:
    """Voxel size of an array that is one level of an OME-Zarr image (``image/0``, ``labels/mito/1``):
    from the multiscales metadata of its parent group, where that lists the array."""
    parent, _, name = (key or "").rpartition("/")
    group = root if not parent else root[parent] if isinstance(root, zarr.Group) else None
    multiscale = _multiscale(group) if isinstance(group, zarr.Group) else None
    if multiscale is None:
        return None
    for dataset in multiscale["datasets"]:
        if str(dataset.get("path")).strip("/") == name:
            return _ome_voxel_size(multiscale, dataset)
    return None


def _images(group: zarr.Group, prefix: str = "") -> list[str]:
    """Names of the readable images below ``group``: OME-Zarr image groups and 2D/3D arrays."""
    found: list[str] = []
    for name, node in sorted(group.members(), key=lambda member: member[0]):
        full = prefix + name
        if isinstance(node, zarr.Group):
            found.extend([full] if _multiscale(node) is not None else _images(node, full + "/"))
        elif node.ndim in (2, 3):
            found.append(full)
    return found


def list_zarr_images(path: Path) -> list[str]:
    """Keys of the images in a zarr store (``[]`` for a store that is a single array)."""
    root = zarr.open(store=str(path), mode="r")
    return _images(root) if isinstance(root, zarr.Group) else []


def _listing(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def _resolve(root: zarr.Group | zarr.Array, path: Path, key: str | None) -> tuple[Any, str | None]:
    """The array or group ``key`` names; with no key, the root or its only image."""
    if isinstance(root, zarr.Array):
        if key:
            raise VolumeError(f"{path}: is a single array, not a group; drop the key '{key}'")
        return root, None
    if key:
        try:
            return root[key.strip("/")], key.strip("/")
        except KeyError:
            raise VolumeError(
                f"{path}: no array '{key}' (available: {_listing(_images(root))}); {KEY_HINT}"
            ) from None
    if _multiscale(root) is not None:
        return root, None
    images = _images(root)
    if len(images) != 1:
        problem = "holds no 2D or 3D array" if not images else f"holds several arrays ({_listing(images)})"
        raise VolumeError(f"{path}: {problem}; {KEY_HINT}")
    return root[images[0]], images[0]


class ZarrVolume(ArrayVolume):
    """A zarr array that checks, on its first read, that no chunk is missing from the store.

    zarr reads a chunk that is not stored as the fill value: an interrupted copy or sync then
    looks like background. A read-only volume with missing chunks warns
    (:class:`MissingChunksWarning`), or refuses to be read when ``allow_missing_chunks`` is False
    (ground-truth labels: a missing chunk would count as a region without objects).
    """

    def __init__(self, array: zarr.Array, *args: Any, allow_missing_chunks: bool, **kwargs: Any) -> None:
        super().__init__(array, *args, **kwargs)
        self._zarr = array  # typed as the zarr array it is (``_array`` is any sliceable array)
        self._allow_missing_chunks = allow_missing_chunks
        self._chunks_checked = self.writable  # outputs being written are incomplete by design

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        if not self._chunks_checked:
            self._check_chunks()
            self._chunks_checked = True
        return super()._read(box)

    def _check_chunks(self) -> None:
        array = self._zarr
        stored, total = array.nchunks_initialized, array.nchunks
        if stored >= total:
            return
        where = f"{self.path}:{self.key}" if self.key else str(self.path)
        problem = (
            f"{where}: {total - stored} of {total} chunks are missing and read as the fill value "
            f"{np.asarray(array.fill_value).item()!r}"
        )
        if not self._allow_missing_chunks:
            raise VolumeError(
                f"{problem}; as labels this would score or train them as background (copy the store again; "
                "if it was written without empty chunks on purpose, allow it: `evaluate "
                "--allow-missing-chunks`, or `allow_missing_chunks: true` on the volume in a training config)"
            )
        warnings.warn(f"{problem} (an incomplete copy?)", MissingChunksWarning, stacklevel=4)


def open_zarr(path: Path, key: str | None, writable: bool, *, allow_missing_chunks: bool = True) -> ArrayVolume:
    """Open a zarr array, or an OME-Zarr image at scale 0, as a (Z, Y, X) volume."""
    root = zarr.open(store=str(path), mode="r+" if writable else "r")
    node, key = _resolve(root, path, key)
    holder = node  # whose attributes the volume shows: the image group for OME-Zarr
    voxel_size: VoxelSize | None = None
    if isinstance(node, zarr.Group):
        multiscale = _multiscale(node)
        if multiscale is None:
            raise VolumeError(
                f"{path}: '{key}' is a group, not an array (images in it: {_listing(_images(node))}); {KEY_HINT}"
            )
        dataset = multiscale["datasets"][0]
        node = node[str(dataset["path"])]
        voxel_size = _ome_voxel_size(multiscale, dataset)
    else:
        voxel_size = voxel_size_from_attrs(node.attrs.asdict()) or _level_voxel_size(root, key)
    if not isinstance(node, zarr.Array):
        raise VolumeError(f"{path}: OME-Zarr scale 0 is not an array; the metadata is inconsistent")
    return ZarrVolume(
        node,
        path,
        key,
        voxel_size,
        allow_missing_chunks=allow_missing_chunks,
        writable=writable,
        attrs_view=(lambda: holder.attrs)
        if writable
        else (lambda: {k: v for k, v in holder.attrs.asdict().items() if k not in _OME_KEYS}),
    )


def _ome_attrs(zarr_format: int, name: str, voxel_size: VoxelSize | None) -> dict[str, Any]:
    """OME-Zarr multiscales metadata for one scale; without a voxel size, unitless scale 1."""
    axes: list[dict[str, str]] = [{"name": a, "type": "space"} for a in ("z", "y", "x")]
    if voxel_size is not None:
        for axis in axes:
            axis["unit"] = "nanometer"
    scale = list(voxel_size) if voxel_size is not None else [1.0, 1.0, 1.0]
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }
    if zarr_format == 2:
        return {"multiscales": [{"version": "0.4", **multiscale}]}
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}}


def create_zarr(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    key: str | None,
    chunks: tuple[int, int, int],
    voxel_size: VoxelSize | None,
    overwrite: bool,
    attrs: dict[str, Any],
) -> ArrayVolume:
    """Write an OME-Zarr image (zarr v3, zstd chunks) at the root, or at group ``key``.

    With a key, an existing store is kept (in its own zarr format) and the image added,
    replacing an image of that name only when ``overwrite``.
    """
    add = key is not None and path.exists()
    root = zarr.open_group(store=str(path), mode="a" if add else "w", zarr_format=None if add else 3)
    image = root
    if key is not None:
        name = key.strip("/")
        if name in root:
            if not overwrite:
                raise VolumeError(
                    f"{path}: already holds '{name}' (pass overwrite=True / --overwrite to replace it)"
                )
            del root[name]
        image = root.require_group(name)
    zarr_format = root.metadata.zarr_format
    extra: dict[str, Any] = {"dimension_names": ("z", "y", "x")} if zarr_format == 3 else {}
    # Every chunk is stored, even all-zero ones, so that a missing chunk always means lost data.
    array = image.create_array(
        "0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, config={"write_empty_chunks": True}, **extra
    )
    image.update_attributes({**_ome_attrs(zarr_format, key or path.stem, voxel_size), **attrs})
    return ArrayVolume(array, path, key, voxel_size, writable=True, attrs_view=lambda: image.attrs)
