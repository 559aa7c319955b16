"""Voxel sizes from the metadata conventions EM tools use, and JSON-file attributes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.atomic import write_text_atomically
from sam4em.io.base import VoxelSize

_NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3,
    "a": 0.1, "å": 0.1, "angstrom": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "\\u00b5m": 1e3, "micron": 1e3, "micrometer": 1e3, "micrometre": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}  # fmt: skip


def nm_per_unit(unit: Any) -> float | None:
    """Nanometres in one ``unit`` ('nm', 'micrometer', 'µm', 'Å', ...), or None if unknown."""
    if not isinstance(unit, str):
        return None
    name = unit.strip().lower()
    return _NM_PER_UNIT.get(name) or _NM_PER_UNIT.get(name.rstrip("s"))


def as_voxel_size(values: Any, scale: float = 1.0, *, reverse: bool = False) -> VoxelSize | None:
    """Three finite positive numbers times ``scale`` as a (z, y, x) tuple, else None.

    ``reverse`` is for formats that list sizes x-first (N5, MRC, neuroglancer).
    """
    try:
        sizes = [float(v) * scale for v in np.asarray(values, dtype=float).ravel()]
    except (TypeError, ValueError):
        return None
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        return None
    if reverse:
        sizes.reverse()
    return sizes[0], sizes[1], sizes[2]


def voxel_size_from_attrs(attrs: Mapping[str, Any], *, xyz: bool = False) -> VoxelSize | None:
    """Voxel size from common attribute names, in nm, (z, y, x).

    Recognised: ``resolution_nm`` / ``voxel_size_nm`` (nm), ``resolution`` / ``voxel_size``
    (unit from ``unit``/``units`` when given, else nm), ``element_size_um`` (µm, as written
    by Fiji's HDF5 plugin and ilastik), ``pixelResolution`` ({dimensions, unit}, N5 viewers).
    ``xyz`` marks containers whose arrays list axes x-first (N5), so values are reversed.
    """
    for name, unit_scale in (("resolution_nm", 1.0), ("voxel_size_nm", 1.0), ("element_size_um", 1e3)):
        if name in attrs:
            found = as_voxel_size(attrs[name], unit_scale, reverse=xyz)
            if found is not None:
                return found
    for name in ("resolution", "voxel_size"):
        if name in attrs:
            unit = attrs.get("units", attrs.get("unit", "nm"))
            if isinstance(unit, list | tuple | np.ndarray) and len(unit):
                unit = unit[0]
            if isinstance(unit, bytes):
                unit = unit.decode(errors="replace")
            scale = nm_per_unit(unit)
            found = as_voxel_size(attrs[name], scale, reverse=xyz) if scale else None
            if found is not None:
                return found
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, Mapping):
        scale = nm_per_unit(pixel.get("unit", "nm"))
        if scale:
            return as_voxel_size(pixel.get("dimensions"), scale, reverse=xyz)
    return None


def to_python(value: Any) -> Any:
    """NumPy scalars/arrays and bytes from HDF5 attributes as plain JSON-like values."""
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()] if value.ndim else to_python(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    return value


def sidecar_path(path: Path) -> Path:
    """Where attributes of a format without its own metadata go: ``<file>.attrs.json``,
    or ``<folder>/attrs.json`` for folders of slices."""
    return path / "attrs.json" if path.is_dir() else path.with_name(path.name + ".attrs.json")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, {} when the file does not exist."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds {type(data).__name__}, not a JSON object")
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically, so a crash mid-write never leaves half a metadata file."""
    write_text_atomically(path, json.dumps(dict(data), indent=2))


class JsonFileAttrs(MutableMapping[str, Any]):
    """A dict persisted in a JSON file on every change.

    ``reserved`` keys (format metadata sharing the file, e.g. N5's ``dimensions``) are
    hidden from the mapping and kept untouched on writes.
    """

    def __init__(self, path: Path, reserved: frozenset[str] = frozenset()) -> None:
        self._file = path
        self._reserved = reserved

    def _user(self) -> dict[str, Any]:
        return {k: v for k, v in read_json(self._file).items() if k not in self._reserved}

    def _change(self, key: str, value: Any, delete: bool = False) -> None:
        if key in self._reserved:
            raise KeyError(f"{key!r} is format metadata in {self._file.name} and cannot be changed")
        data = read_json(self._file)
        if delete:
            del data[key]
        else:
            json.dumps(value)  # fail before touching the file when the value is not JSON
            data[key] = value
        write_json(self._file, data)

    def __getitem__(self, key: str) -> Any:
        return self._user()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._change(key, value)

    def __delitem__(self, key: str) -> None:
        self._change(key, None, delete=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._user())

    def __len__(self) -> int:
        return len(self._user())

    def __repr__(self) -> str:
        return f"JsonFileAttrs({self._file}, {self._user()!r})"
