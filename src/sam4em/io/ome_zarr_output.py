"""OME-Zarr (NGFF 0.5, zarr v3) segmentation outputs that viewers open at the input's voxel size.

Layout of ``out.ome.zarr`` (metadata written by ome-zarr-py):

* ``/``: image group of the input volume (z, y, x), so viewers show the labels over the EM data;
* ``/labels/<class>``: one ``image-label`` group per class: uint8 0/1 masks (labels) or uint32 ids
  (instances), with the class name in the label properties;
* ``/probabilities``: image group (c, z, y, x) with one channel per class, named by the ``omero``
  channel labels (probabilities outputs).

Every image is a multiscale pyramid whose axes z, y, x are in nanometres with the input's voxel size
as the scale of level 0. Levels halve y and x and keep z (as ome-zarr-py's default scaler does, and
anisotropic EM stacks want): labels by nearest neighbour, intensities and probabilities by 2x2 mean.
So a z-block writes all its levels by itself (:class:`PyramidVolume`): streaming, resuming and
several processes writing different z-blocks work as for plain Zarr outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from sam4em.io.api import open_volume
from sam4em.io.base import Volume, VolumeBase, VolumeError, VoxelSize

__all__ = [
    "OME_SUFFIX",
    "PyramidVolume",
    "create_ome_output",
    "is_ome_output",
    "ome_output_keys",
    "open_output",
    "pyramid_shapes",
]

OME_SUFFIX = ".ome.zarr"
#: Root attribute marking a sam4em OME-Zarr output (its keys are not plain arrays).
LAYOUT = "sam4em_layout"
PROBABILITIES = "probabilities"
Downsample = Literal["nearest", "mean"]
#: Colours of label value 1 per class, in class order (RGBA).
_COLOURS = (
    [255, 64, 64, 255],
    [64, 160, 255, 255],
    [64, 220, 64, 255],
    [255, 200, 0, 255],
    [200, 64, 255, 255],
)


def pyramid_shapes(shape: Sequence[int], min_edge: int = 64, max_levels: int = 8) -> list[tuple[int, ...]]:
    """Shapes of the levels of ``shape`` (..., Y, X): y and x halved (rounded up) while both stay
    at least ``min_edge``; level 0 is ``shape`` itself."""
    levels = [tuple(int(n) for n in shape)]
    while len(levels) < max_levels:
        *lead, y, x = levels[-1]
        y, x = -(-y // 2), -(-x // 2)
        if min(y, x) < min_edge:
            break
        levels.append((*lead, y, x))
    return levels


def downsample(block: np.ndarray, method: Downsample) -> np.ndarray:
    """Halve the last two axes of ``block`` (rounding up): every other voxel, or 2x2 means
    (edges padded by replication, integers rounded)."""
    if method == "nearest":
        return block[..., ::2, ::2]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, block.shape[-2] % 2), (0, block.shape[-1] % 2)]
    work = np.pad(block.astype(np.float32), pad, mode="edge")
    means = work.reshape(*work.shape[:-2], work.shape[-2] // 2, 2, work.shape[-1] // 2, 2).mean(axis=(-3, -1))
    if np.issubdtype(block.dtype, np.integer):
        means = np.rint(means)
    return means.astype(block.dtype)


def ome_output_keys(output_type: str, classes: Sequence[str]) -> tuple[str, ...]:
    """The keys a streaming run writes: ``labels/<class>`` or ``probabilities/<class>`` (a channel)."""
    prefix = PROBABILITIES if output_type == "probs" else "labels"
    return tuple(f"{prefix}/{name}" for name in classes)


def is_ome_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sam4em OME-Zarr output (its root carries the layout mark)."""
    meta = Path(path) / "zarr.json"
    try:
        return LAYOUT in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def _axes(voxel_size: VoxelSize | None, channel: bool) -> list[dict[str, str]]:
    axes = [{"name": "c", "type": "channel"}] if channel else []
    for name in "zyx":
        axes.append({"name": name, "type": "space", **({"unit": "nanometer"} if voxel_size else {})})
    return axes


def _pyramid(
    group: zarr.Group,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    voxel_size: VoxelSize | None,
    name: str,
    min_edge: int,
    **metadata: Any,
) -> None:
    """Empty level arrays ``0, 1, ...`` in ``group`` and their multiscales metadata."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    channel = len(shape) == 4
    sizes = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    datasets = []
    for level, level_shape in enumerate(pyramid_shapes(shape, min_edge)):
        group.create_array(
            str(level),
            shape=level_shape,
            dtype=dtype,
            chunks=tuple(min(c, n) for c, n in zip(chunks, level_shape, strict=True)),
            fill_value=0,
            dimension_names=("c", "z", "y", "x") if channel else ("z", "y", "x"),
            config={"write_empty_chunks": True},  # a missing chunk then always means lost data
        )
        scale = [sizes[0], sizes[1] * 2**level, sizes[2] * 2**level]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": [1.0] * channel + scale}],
            }
        )
    write_multiscales_metadata(
        group, datasets, fmt=FormatV05(), axes=_axes(voxel_size, channel), name=name, **metadata
    )


def create_ome_output(
    path: Path,
    *,
    shape: tuple[int, int, int],
    input_dtype: Any,
    output_type: str,
    classes: Sequence[str],
    dtype: Any,
    chunks: tuple[int, int, int],
    voxel_size: VoxelSize | None,
    attrs: dict[str, Any],
    min_edge: int = 64,
) -> None:
    """Create the empty output (see the module docstring); ``attrs`` go to every group a key names."""
    # Imported here: ome-zarr-py (with dask) costs seconds to import, and only creating needs it.
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata, write_label_metadata

    root = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    _pyramid(root, shape, input_dtype, chunks, voxel_size, "input", min_edge)
    root.update_attributes({LAYOUT: "ome-zarr-segmentation"})
    if output_type == "probs":
        group = root.create_group(PROBABILITIES)
        top = 255 if np.dtype(dtype) == np.uint8 else 1
        channels = [
            {"label": name, "color": "".join(f"{c:02X}" for c in _COLOURS[i % len(_COLOURS)][:3]), "active": True,
             "window": {"min": 0, "max": top, "start": 0, "end": top}}
            for i, name in enumerate(classes)
        ]  # fmt: skip
        _pyramid(
            group, (len(classes), *shape), dtype, (1, *chunks), voxel_size, PROBABILITIES, min_edge,
            metadata={"omero": {"channels": channels}},
        )  # fmt: skip
        group.update_attributes(attrs)
        return
    labels = root.create_group("labels")
    add_metadata(labels, {"version": FormatV05().version}, fmt=FormatV05())  # ome-zarr-py leaves it out
    for i, name in enumerate(classes):
        group = labels.create_group(name)
        _pyramid(group, shape, dtype, chunks, voxel_size, name, min_edge)
        group.update_attributes(attrs)  # before ome-zarr-py writes image-label through another handle
        one = output_type == "labels"  # 0/1 masks: value 1 is the class; instances: every id is
        write_label_metadata(
            labels, name, fmt=FormatV05(),
            colors=[{"label-value": 1, "rgba": _COLOURS[i % len(_COLOURS)]}] if one else None,
            properties=[{"label-value": 1, "class": name}] if one else None,
        )  # fmt: skip


class PyramidVolume(VolumeBase):
    """A (Z, Y, X) view of level 0 of a pyramid (one channel of it, for probabilities); writing a
    region rewrites the matching region of every coarser level from the level above it."""

    def __init__(
        self,
        path: Path,
        key: str | None,
        group: zarr.Group,
        channel: int | None,
        method: Downsample,
        voxel_size: VoxelSize | None,
        *,
        writable: bool,
    ) -> None:
        self._levels = [_level(group, str(d["path"]), path) for d in _multiscale(group)["datasets"]]
        self._lead: tuple[int, ...] = () if channel is None else (channel,)
        self._group = group
        self._method = method
        z, y, x = self._levels[0].shape[len(self._lead) :]
        super().__init__(path, key, (z, y, x), self._levels[0].dtype, voxel_size, writable=writable)

    @property
    def attrs(self) -> Any:
        return self._group.attrs if self.writable else self._group.attrs.asdict()

    @property
    def levels(self) -> int:
        return len(self._levels)

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self._levels[0][self._lead + box])

    def _write(self, box: tuple[slice, slice, slice], block: np.ndarray) -> None:
        if any(s.step not in (None, 1) for s in box):
            raise VolumeError(f"{self.path}: pyramid levels are written in contiguous regions only")
        self._levels[0][self._lead + box] = block
        zs, ys, xs = box
        written = block
        for parent, child in pairwise(self._levels):
            y0, y1, x0, x1 = ys.start // 2, -(-ys.stop // 2), xs.start // 2, -(-xs.stop // 2)
            above: tuple[int | slice, ...] = (*self._lead, zs, slice(2 * y0, 2 * y1), slice(2 * x0, 2 * x1))
            below: tuple[int | slice, ...] = (*self._lead, zs, slice(y0, y1), slice(x0, x1))
            # A box on even borders (every whole-slice block) is exactly what was just written, in the
            # level's dtype; any other box needs its neighbours' pixels, read back from the level.
            aligned = all(s.start % 2 == 0 and (s.stop % 2 == 0 or s.stop == n)
                          for s, n in ((ys, parent.shape[-2]), (xs, parent.shape[-1])))
            region = np.asarray(written, dtype=parent.dtype) if aligned else np.asarray(parent[above])
            written = downsample(region, self._method)
            child[below] = written
            ys, xs = slice(y0, y1), slice(x0, x1)


def _multiscale(group: zarr.Group) -> dict[str, Any]:
    """The (only) multiscale of a group sam4em wrote: KeyError when the group has none."""
    # Attributes are untyped JSON; what a sam4em output holds is fixed by _pyramid.
    attrs: dict[str, Any] = dict(group.attrs)
    multiscale: dict[str, Any] = attrs["ome"]["multiscales"][0]
    return multiscale


def _group(root: zarr.Group, name: str) -> zarr.Group:
    """The group at ``name`` ('' = root); KeyError when it is missing or an array."""
    node = root[name] if name else root
    if not isinstance(node, zarr.Group):
        raise KeyError(name)
    return node


def _level(group: zarr.Group, level: str, path: Path) -> zarr.Array:
    node = group[level]
    if not isinstance(node, zarr.Array):
        raise VolumeError(f"{path}: pyramid level '{level}' is a group, not an array (write the output again)")
    return node


def open_output(path: str | os.PathLike[str], key: str | None, mode: str = "r") -> Volume:
    """One array of a segmentation output: the pyramid view for sam4em OME-Zarr outputs (key None:
    the input image; ``labels/<class>``; ``probabilities/<class>``), else ``open_volume``."""
    if not is_ome_output(path):
        return open_volume(path, key, mode=mode)
    target = Path(path)
    root = zarr.open_group(store=str(target), mode="r+" if mode == "r+" else "r")
    name = (key or "").strip("/")
    head, _, tail = name.partition("/")
    channel = None
    try:
        group = _group(root, PROBABILITIES if head == PROBABILITIES else name)
        if head == PROBABILITIES:
            attrs: dict[str, Any] = dict(group.attrs)  # untyped JSON, as _pyramid wrote it
            channel = [c["label"] for c in attrs["ome"]["omero"]["channels"]].index(tail)
        meta = _multiscale(group)
    except (KeyError, ValueError):
        raise VolumeError(
            f"{target}: no image '{name}' in this OME-Zarr output (keys: labels/<class>, "
            f"{PROBABILITIES}/<class>, or none for the input)"
        ) from None
    scale = meta["datasets"][0]["coordinateTransformations"][0]["scale"][-3:]
    has_unit = all("unit" in axis for axis in meta["axes"][-3:])
    method: Downsample = "nearest" if head == "labels" else "mean"
    voxel_size = (float(scale[0]), float(scale[1]), float(scale[2])) if has_unit else None
    return PyramidVolume(target, name or None, group, channel, method, voxel_size, writable=mode == "r+")
