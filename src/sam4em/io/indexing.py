"""NumPy-style basic indexing of (Z, Y, X) volumes, reduced to boxes the formats can read.

Every format only has to read (or write) a box: three slices with step >= 1 and starts and
stops inside the volume. Integer indices and negative steps are handled here, around the box.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A normalised index: the box to read, then which axes to flip and which to drop."""

    box: tuple[slice, slice, slice]
    flip: tuple[bool, bool, bool]
    drop: tuple[bool, bool, bool]

    @property
    def box_shape(self) -> tuple[int, int, int]:
        z, y, x = (len(range(s.start, s.stop, s.step)) for s in self.box)
        return z, y, x

    @property
    def result_shape(self) -> tuple[int, ...]:
        return tuple(n for n, dropped in zip(self.box_shape, self.drop, strict=True) if not dropped)

    def finish(self, block: np.ndarray) -> np.ndarray:
        """Turn a box of shape ``box_shape`` into what NumPy indexing would return."""
        flips = tuple(slice(None, None, -1 if f else None) for f in self.flip)
        block = block[flips]
        drops = tuple(0 if d else slice(None) for d in self.drop)
        return np.ascontiguousarray(block[drops])

    def prepare(self, value: Any, dtype: np.dtype[Any]) -> np.ndarray:
        """Broadcast an assigned value to the box (the inverse of ``finish``), cast to ``dtype``."""
        data = np.broadcast_to(np.asarray(value), self.result_shape)
        for axis, dropped in enumerate(self.drop):
            if dropped:
                data = np.expand_dims(data, axis)
        flips = tuple(slice(None, None, -1 if f else None) for f in self.flip)
        return np.ascontiguousarray(data[flips], dtype=dtype)


def _axis(item: Any, size: int, axis: int) -> tuple[slice, bool, bool]:
    """One axis of an index as (forward slice, flipped, dropped)."""
    if isinstance(item, slice):
        r = range(*item.indices(size))
        if len(r) == 0:
            return slice(0, 0, 1), False, False
        if r.step > 0:
            return slice(r.start, r[-1] + 1, r.step), False, False
        return slice(r[-1], r[0] + 1, -r.step), True, False
    try:
        i = operator.index(item)
    except TypeError:
        raise TypeError(
            f"volumes take ints, slices and ... as indices, got {type(item).__name__} "
            "(read a block first, then index the NumPy array)"
        ) from None
    if not -size <= i < size:
        raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
    i %= size
    return slice(i, i + 1, 1), False, True


def select(index: Any, shape: tuple[int, int, int]) -> Selection:
    """Normalise ``index`` (ints, slices, one Ellipsis, or a tuple of them) against ``shape``."""
    items = index if isinstance(index, tuple) else (index,)
    ellipses = sum(item is Ellipsis for item in items)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        fill = (slice(None),) * (3 - len(items) + 1)
        items = items[:at] + fill + items[at + 1 :]
    if len(items) > 3:
        raise IndexError(f"too many indices for a 3D volume: {len(items)} were given")
    items = items + (slice(None),) * (3 - len(items))
    parts = [_axis(item, size, axis) for axis, (item, size) in enumerate(zip(items, shape, strict=True))]
    box = (parts[0][0], parts[1][0], parts[2][0])
    flip = (parts[0][1], parts[1][1], parts[2][1])
    drop = (parts[0][2], parts[1][2], parts[2][2])
    return Selection(box, flip, drop)
