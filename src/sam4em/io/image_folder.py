"""Volumes stored as one image file per slice: a folder of .png/.tif/.tiff, or a single PNG.

Slices are ordered by the number in their names (``2.png`` before ``10.png``). A folder has
no metadata of its own: its voxel size and attributes live in ``<folder>/attrs.json``
(voxel size under ``voxel_size_nm``, z-y-x). Folders are written as ``0000.tif, 0001.tif, ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from sam4em.io.base import VolumeBase, VolumeError, VoxelSize, corrupt_error, to_gray
from sam4em.io.metadata import JsonFileAttrs, as_voxel_size, read_json, sidecar_path
from sam4em.io.slices import slice_files
from sam4em.io.tiff import check_writable_dtype, open_tiff

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOXEL_SIZE_KEY = "voxel_size_nm"


def _png_shape(file: Path) -> tuple[int, int] | None:
    """(Y, X) from a PNG's IHDR header, without decoding; None when the header is not PNG."""
    with file.open("rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _decode_file(file: Path) -> tuple[np.ndarray, bool]:
    if file.suffix.lower() != ".png":
        with open_tiff(file, writable=False) as vol:
            if vol.shape[0] != 1:
                raise VolumeError(f"{file}: slice holds {vol.shape[0]} planes; slices must be 2D images")
            return vol[0], vol.converts_rgb
    pixels = imagecodecs.png_decode(file.read_bytes())
    if pixels.ndim == 3:
        return to_gray(pixels, pixels.dtype), True
    return pixels, False


def _slice_shape_of(file: Path) -> tuple[int, int] | None:
    if file.suffix.lower() == ".png":
        return _png_shape(file)
    with open_tiff(file, writable=False) as vol:
        return vol.shape[1], vol.shape[2]


def _decode(file: Path) -> tuple[np.ndarray, bool]:
    """One slice as a (Y, X) gray image, and whether it was RGB(A) before conversion."""
    try:
        return _decode_file(file)
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:  # libpng and tifffile report bad bytes with their own exception types
        raise corrupt_error(file, exc) from exc


def _slice_shape(file: Path) -> tuple[int, int] | None:
    """(Y, X) of a slice from its header alone."""
    try:
        return _slice_shape_of(file)
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:
        raise corrupt_error(file, exc) from exc


class ImageStackVolume(VolumeBase):
    """Slice files as a (Z, Y, X) volume; each read decodes only the slices it touches."""

    def __init__(self, path: Path, files: list[Path], *, writable: bool = False) -> None:
        first, rgb = _decode(files[0])
        self._where = f"{path}/" if path.is_dir() else str(path)
        for file in files[1:]:
            # Headers only: a folder with one odd slice fails now, not hours into a run.
            self._check(file, _slice_shape(file), first.shape, files[0], "shape")
        meta = read_json(sidecar_path(path)) if path.is_dir() else {}
        voxel_size = as_voxel_size(meta[VOXEL_SIZE_KEY]) if VOXEL_SIZE_KEY in meta else None
        super().__init__(
            path,
            None,
            (len(files), *first.shape),
            first.dtype,
            voxel_size,
            writable=writable,
            converts_rgb=rgb,
        )
        self._files = files
        self._attrs = JsonFileAttrs(sidecar_path(path))

    def _check(self, file: Path, found: Any, expected: Any, reference: Path, what: str) -> None:
        if found is not None and found != expected:
            raise VolumeError(
                f"{self._where}: slice {file.name} has {what} {found} but {reference.name} has {expected}; "
                f"all slices must share one {what}"
            )

    @property
    def attrs(self) -> Any:
        if self.writable:
            return self._attrs
        return read_json(sidecar_path(self.path)) if self.path.is_dir() else {}

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        planes = []
        for z in range(box[0].start, box[0].stop, box[0].step):
            plane, _ = _decode(self._files[z])
            self._check(self._files[z], plane.shape, self.shape[1:], self._files[0], "shape")
            self._check(self._files[z], plane.dtype, self.dtype, self._files[0], "dtype")
            planes.append(plane[box[1], box[2]])
        return np.stack(planes)

    def _write(self, box: tuple[slice, slice, slice], block: np.ndarray) -> None:
        for i, z in enumerate(range(box[0].start, box[0].stop, box[0].step)):
            plane = tifffile.memmap(self._files[z], mode="r+")
            plane[box[1], box[2]] = block[i]
            plane.flush()
            del plane  # unmap now: thousands of slices would otherwise keep thousands of maps open


def open_images(path: Path) -> ImageStackVolume:
    """Open a folder of .png/.tif/.tiff slices, or one PNG file, as a (Z, Y, X) volume."""
    files = [path] if path.is_file() else slice_files(path)
    if not files:
        raise VolumeError(f"{path}/: folder holds no .png/.tif images")
    return ImageStackVolume(path, files)


def create_folder(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    voxel_size: VoxelSize | None,
    attrs: dict[str, Any],
) -> ImageStackVolume:
    """Create ``path/0000.tif ...``: one uncompressed, memory-mappable TIFF per slice."""
    check_writable_dtype(path, dtype)
    path.mkdir(parents=True)
    width = max(4, len(str(shape[0] - 1)))
    files = [path / f"{z:0{width}d}.tif" for z in range(shape[0])]
    zeros = np.zeros(shape[1:], dtype=dtype)
    for file in files:
        tifffile.imwrite(file, zeros, photometric="minisblack")
    meta = dict(attrs)
    if voxel_size is not None:
        meta[VOXEL_SIZE_KEY] = list(voxel_size)
    if meta:
        JsonFileAttrs(sidecar_path(path)).update(meta)
    return ImageStackVolume(path, files, writable=True)
