"""numpy arrays as torch tensors without surprises: one place that knows what `torch.from_numpy` refuses."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor"]


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a CPU tensor, sharing its memory where torch can take it as it is, else a copy:
    non-native byte order (MRC, some TIFF), read-only views (memory maps, broadcasts), negative strides,
    long doubles (as float64) and unsigned ints wider than 8 bits (as the next wider signed int, exactly;
    uint64 as float64), whose torch dtypes lack most operations. Other dtypes torch lacks raise
    TypeError naming the dtype."""
    dtype = array.dtype.newbyteorder("=")
    if dtype.kind == "f" and dtype.itemsize > 8:
        dtype = np.dtype(np.float64)
    elif dtype.kind == "u" and dtype.itemsize > 1:
        dtype = np.dtype({2: np.int32, 4: np.int64}.get(dtype.itemsize, np.float64))
    if dtype.kind not in "biuf":
        raise TypeError(f"arrays of dtype {array.dtype} have no torch counterpart; convert them to a numeric dtype")
    if dtype != array.dtype or not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=dtype, order="C")
    return torch.from_numpy(array)
