"""One volume interface for the file formats EM labs use.

``open_volume`` reads TIFF (multi-page, ImageJ, OME), folders of PNG/TIFF slices, HDF5,
Zarr (v2, v3, OME-Zarr), N5, MRC and neuroglancer precomputed volumes as lazily indexed
(Z, Y, X) arrays; ``create_volume`` writes all of them but precomputed. Every failure is a
``VolumeError`` whose message names the file, the problem and the fix. The formats are the
entries of the table in :mod:`sam4em.io.formats`; ``register_format`` adds one.
"""

from __future__ import annotations

from sam4em.io.api import create_volume, list_volumes, open_volume
from sam4em.io.base import MissingChunksWarning, Volume, VolumeError, VoxelSize, WritableVolume
from sam4em.io.paths import has_scheme, parse_path_key, resolve_path

__all__ = [
    "MissingChunksWarning",
    "Volume",
    "VolumeError",
    "VoxelSize",
    "WritableVolume",
    "create_volume",
    "has_scheme",
    "list_volumes",
    "open_volume",
    "parse_path_key",
    "resolve_path",
]
