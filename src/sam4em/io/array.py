"""Volumes backed by any NumPy-style sliceable array (HDF5, Zarr, N5, MRC, memory maps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sam4em.io.base import VolumeBase, VolumeError, VoxelSize


class SliceableArray(Protocol):
    """What an array library must offer: shape, dtype and basic slicing (steps >= 1)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> Any: ...
    def __getitem__(self, index: Any) -> Any: ...
    def __setitem__(self, index: Any, value: Any) -> None: ...


def spatial_layout(shape: tuple[int, ...], where: str) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """How an N-D array maps to (Z, Y, X): the fixed leading index and the volume shape.

    2D arrays are one-slice volumes; leading axes of size 1 (e.g. OME-Zarr t and c) are
    dropped. Anything else cannot be read as a single grey-value volume.
    """
    if len(shape) == 2:
        return (), (1, shape[0], shape[1])
    if len(shape) >= 3 and all(n == 1 for n in shape[:-3]):
        lead = (0,) * (len(shape) - 3)
        return lead, (shape[-3], shape[-2], shape[-1])
    raise VolumeError(
        f"{where}: holds a {len(shape)}D array of shape {tuple(shape)}; expected (Z, Y, X) or (Y, X) "
        "(split channels or time points into separate volumes first)"
    )


class ArrayVolume(VolumeBase):
    """A (Z, Y, X) view of a sliceable array; 2D arrays read as shape (1, Y, X).

    ``attrs`` is ``attrs_view()``: the live, persisted mapping for writable volumes, a dict
    snapshot otherwise. ``on_close`` releases the file.
    """

    def __init__(
        self,
        array: SliceableArray,
        path: Path,
        key: str | None,
        voxel_size: VoxelSize | None,
        *,
        writable: bool,
        attrs_view: Callable[[], Any] = dict,
        on_close: Callable[[], None] | None = None,
        dtype: Any = None,
    ) -> None:
        where = f"{path}:{key}" if key else str(path)
        self._lead, shape = spatial_layout(tuple(array.shape), where)
        self._is2d = len(array.shape) == 2
        super().__init__(path, key, shape, np.dtype(dtype or array.dtype), voxel_size, writable=writable)
        self._array = array
        self._attrs_view = attrs_view
        self._on_close = on_close

    @property
    def attrs(self) -> Any:
        return self._attrs_view()

    def _index(self, box: tuple[slice, slice, slice]) -> tuple[Any, ...]:
        # A 2D array has no z axis; the box's z range is then [0, 1).
        return self._lead + (box[1:] if self._is2d else box)

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        block = self._array[self._index(box)]
        # Slices of memory maps are views into the file: copy so callers get ordinary arrays.
        block = np.array(block) if isinstance(block, np.memmap) else np.asarray(block)
        return block[np.newaxis] if self._is2d else block

    def _write(self, box: tuple[slice, slice, slice], block: np.ndarray) -> None:
        self._array[self._index(box)] = block[0] if self._is2d else block

    def _close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        self._array = None  # type: ignore[assignment]  # drop memory maps so the file can be released
