"""A NumPy-style sliceable view of a tensorstore array, for ArrayVolume."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts


class TensorStoreArray:
    """Blocking reads and writes of a tensorstore (whose domain starts at 0) by basic indexing."""

    def __init__(self, store: ts.TensorStore) -> None:
        self._store = store

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._store.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._store.dtype.numpy_dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._store[index].read().result())

    def __setitem__(self, index: Any, value: Any) -> None:
        self._store[index].write(value).result()


def open_store(spec: dict[str, Any], *, writable: bool, create: bool = False) -> ts.TensorStore:
    """Open a tensorstore, read-only unless ``writable``, translated so indices start at 0."""
    store = ts.open(spec, read=True, write=writable, create=create).result()
    return store.translate_to[0]
