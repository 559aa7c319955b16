"""The volume interface every format implements, and the one error type it raises.

A volume is a lazily indexed 3D array with axes (Z, Y, X): Z is the slice (section) axis,
Y the image rows, X the image columns. A single 2D image is a volume of shape (1, Y, X).
Voxel sizes are tuples of 3 floats in nanometres, in the same (z, y, x) order.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np
from typing_extensions import Self  # typing.Self needs Python 3.11; the package supports 3.10

from sam4em.io.indexing import Selection, select

VoxelSize = tuple[float, float, float]
Index = int | slice | EllipsisType | tuple[int | slice | EllipsisType, ...]


class VolumeError(ValueError):
    """A volume cannot be opened, read or written.

    The message is always one line: the file, the problem and the fix, e.g.
    ``"missing.tif: no such file or directory (check the path)"``.
    """

    def __init__(self, message: str) -> None:
        # Reasons quoted from libraries can span lines; CLI logs and tests expect one line.
        super().__init__(" ".join(str(message).split()))


class MissingChunksWarning(UserWarning):
    """A chunked volume lacks stored chunks, which read as the fill value (often zeros)."""


def corrupt_error(path: Path | str, exc: BaseException) -> VolumeError:
    """The error for a file a library could not decode, quoting the library's reason."""
    return VolumeError(f"{path}: cannot read file (corrupt or truncated: {type(exc).__name__}: {exc})")


@runtime_checkable
class Volume(Protocol):
    """A read-only (Z, Y, X) volume; indexing reads only the voxels asked for."""

    @property
    def shape(self) -> tuple[int, int, int]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def voxel_size(self) -> VoxelSize | None: ...
    @property
    def path(self) -> Path: ...
    @property
    def key(self) -> str | None: ...
    @property
    def attrs(self) -> Mapping[str, Any]: ...
    def __getitem__(self, index: Index) -> np.ndarray: ...
    def __len__(self) -> int: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class WritableVolume(Volume, Protocol):
    """A (Z, Y, X) volume that can also be written region by region (chunk by chunk)."""

    @property
    def attrs(self) -> MutableMapping[str, Any]: ...
    def __setitem__(self, index: Index, value: Any) -> None: ...


_SUPPORTED_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def check_dtype(dtype: Any, path: Path | str) -> np.dtype[Any]:
    """The native-byte-order dtype, or a VolumeError for dtypes images cannot have."""
    dt = np.dtype(dtype)
    if dt.kind not in _SUPPORTED_KINDS or dt.fields is not None:
        raise VolumeError(f"{path}: unsupported dtype {dt} (use integer or float images)")
    return dt.newbyteorder("=")


def to_gray(pixels: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Luminance (ITU-R 601) of (..., S) pixels with S = 2 (gray + alpha), 3 (RGB) or 4 (RGBA)."""
    if pixels.shape[-1] < 3:
        return pixels[..., 0].astype(dtype, copy=False)
    work = np.dtype(np.float64 if dtype.itemsize > 2 else np.float32)
    weights = np.array([0.299, 0.587, 0.114], dtype=work)
    gray = np.matmul(pixels[..., :3].astype(work), weights)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        gray = np.clip(np.rint(gray), info.min, info.max)
    return gray.astype(dtype)


class VolumeBase:
    """Shared indexing, array conversion and lifecycle; formats implement ``_read``/``_write``.

    ``_read(box)`` receives three slices with steps >= 1 and in-bounds starts/stops and
    returns exactly that (z, y, x) block; ``_write(box, block)`` stores such a block.
    """

    def __init__(
        self,
        path: Path,
        key: str | None,
        shape: tuple[int, int, int],
        dtype: np.dtype[Any],
        voxel_size: VoxelSize | None,
        *,
        writable: bool = False,
        converts_rgb: bool = False,
    ) -> None:
        self._path = path
        self._key = key
        self._shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._dtype = check_dtype(dtype, path)
        self._voxel_size = voxel_size
        self._writable = writable
        self._closed = False
        #: True when the file stores RGB(A) and reads return its luminance.
        self.converts_rgb = converts_rgb

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 3

    @property
    def voxel_size(self) -> VoxelSize | None:
        return self._voxel_size

    @property
    def path(self) -> Path:
        return self._path

    @property
    def key(self) -> str | None:
        return self._key

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def attrs(self) -> Any:
        """Metadata: a live, persisted mapping when writable, else a dict snapshot."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        where = f"{self._path}" + (f":{self._key}" if self._key else "")
        return (
            f"{type(self).__name__}({where!r}, shape={self._shape}, dtype={self._dtype}, "
            f"voxel_size={self._voxel_size})"
        )

    def __getitem__(self, index: Index) -> np.ndarray:
        sel = select(index, self._shape)
        if any(n == 0 for n in sel.box_shape):
            return sel.finish(np.zeros(sel.box_shape, dtype=self._dtype))
        self._check_open()
        try:
            block = self._read(sel.box)
        except (VolumeError, MemoryError, Warning):  # a warning filtered into an error stays itself
            raise
        except Exception as exc:
            # Decoders (zlib, blosc, libpng, HDF5, tensorstore) raise many unrelated types on bad bytes.
            raise corrupt_error(self._path, exc) from exc
        if block.shape != sel.box_shape:
            raise VolumeError(
                f"{self._path}: cannot read file (corrupt or truncated: got a block of shape "
                f"{block.shape} where {sel.box_shape} was expected)"
            )
        return sel.finish(block.astype(self._dtype, copy=False))

    def __setitem__(self, index: Index, value: Any) -> None:
        if not self._writable:
            raise VolumeError(f"{self._path}: opened read-only (use create_volume, or open_volume mode='r+')")
        self._check_open()
        sel: Selection = select(index, self._shape)
        block = sel.prepare(value, self._dtype)
        if block.size:
            self._write(sel.box, block)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:, :, :]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Flush pending writes and release the file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise VolumeError(f"{self._path}: volume is closed (open it again)")

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, box: tuple[slice, slice, slice], block: np.ndarray) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release format resources; called once."""
