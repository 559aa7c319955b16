"""Neuroglancer precomputed volumes (read-only) through tensorstore.

A local folder holding an ``info`` file, or ``precomputed://<folder>``. ``key`` picks a
scale by its key (e.g. ``"8_8_40"``); the default is scale 0. Neuroglancer lists axes and
resolutions x-first: volumes are transposed to (Z, Y, X) and resolutions reversed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sam4em.io.array import ArrayVolume
from sam4em.io.base import VolumeError
from sam4em.io.metadata import as_voxel_size, read_json
from sam4em.io.tensorstore_array import TensorStoreArray, open_store


def open_precomputed(path: Path, key: str | None) -> ArrayVolume:
    """Open one scale of a precomputed image as a (Z, Y, X) volume; only one channel is supported."""
    info = read_json(path / "info")
    scales: list[dict[str, Any]] = info.get("scales") or []
    keys = [str(s.get("key")) for s in scales]
    if key is not None and key not in keys:
        raise VolumeError(
            f"{path}: no scale '{key}' (available: {', '.join(map(repr, keys)) or 'none'}); pass a scale key"
        )
    index = keys.index(key) if key is not None else 0
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path)},
        "scale_index": index,
    }
    # Domain (x, y, z, channel): transposed to (channel, z, y, x); a single channel is then dropped.
    store = open_store(spec, writable=False).T
    resolution = scales[index].get("resolution") if scales else None
    return ArrayVolume(
        TensorStoreArray(store),
        path,
        key,
        as_voxel_size(resolution, reverse=True),
        writable=False,
        attrs_view=lambda: {k: v for k, v in info.items() if k != "scales"},
    )
