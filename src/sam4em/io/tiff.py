"""TIFF volumes (multi-page, ImageJ and OME-TIFF) through tifffile.

Uncompressed, contiguous files are memory-mapped; others (e.g. Lucchi++'s zlib pages) are
decoded page by page, only the pages a read touches. The first series of the file is the
volume: its one stack axis (Z, or any other single non-singleton axis) becomes Z, and RGB(A)
samples are reduced to luminance. Voxel sizes come from OME (PhysicalSize*) or ImageJ
(resolution tags, spacing, unit) metadata; plain TIFF resolution tags are ignored because
EM software fills them with meaningless defaults (72 dpi, 1 pixel per inch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import tifffile

from sam4em.io.base import VolumeBase, VolumeError, VoxelSize, to_gray
from sam4em.io.metadata import JsonFileAttrs, as_voxel_size, nm_per_unit, read_json, sidecar_path

_IMAGEJ_DTYPES = frozenset({"uint8", "uint16", "float32"})
_IMAGEJ_MAX_BYTES = 2**32 - 2**25  # ImageJ files cannot be BigTIFF; larger volumes are written as OME


def _stack_axes(axes: str, shape: tuple[int, ...], path: Path) -> tuple[str, tuple[int, ...]]:
    """Drop singleton axes other than Y and X; at most one stack axis may remain.

    tifffile names the axes of a 1 x 1 x 1 image 'XYX': of a letter given twice, a singleton
    is dropped unless it is the last Y or X.
    """
    last = {a: i for i, a in enumerate(axes) if a in "YX"}
    kept = [(a, n) for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if n != 1 or last.get(a) == i]
    squeezed = "".join(a for a, _ in kept)
    stack = [a for a in squeezed if a not in "YXS"]
    if len(stack) > 1 or len(set(squeezed)) < len(squeezed) or "Y" not in squeezed or "X" not in squeezed:
        raise VolumeError(
            f"{path}: holds a {len(squeezed)}D image with axes {squeezed} and shape {tuple(n for _, n in kept)}; "
            "expected one stack axis (Z, Y, X) (split channels or time points into separate files first)"
        )
    samples = dict(kept).get("S")
    if samples not in (None, 2, 3, 4):
        raise VolumeError(f"{path}: holds {samples} samples per pixel; expected gray, RGB or RGBA images")
    return squeezed, tuple(n for _, n in kept)


def _to_zyxs(array: np.ndarray, axes: str) -> np.ndarray:
    """A view of ``array`` (with the given axes) ordered as (Z, Y, X) or (Z, Y, X, S)."""
    stack = [i for i, a in enumerate(axes) if a not in "YXS"]
    order = stack + [axes.index("Y"), axes.index("X")] + ([axes.index("S")] if "S" in axes else [])
    view = array.transpose(order)
    return view if stack else view[np.newaxis]


def _ome_voxel_size(xml: str) -> VoxelSize | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None  # unreadable metadata must not stop the pixels from being read
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "ZYX":
        factor = nm_per_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"))  # OME's default unit is µm
        value = pixels.get(f"PhysicalSize{axis}")
        if factor is None or value is None:
            return None
        sizes.append(float(value) * factor)
    return as_voxel_size(sizes)


def _imagej_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    meta = tif.imagej_metadata or {}
    factor = nm_per_unit(meta.get("unit"))
    page = tif.pages.first
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if factor is None or "spacing" not in meta or xres is None or yres is None:
        return None
    try:
        # Tags hold pixels per unit as 32-bit rationals: invert, and drop the rational's noise digits.
        x, y = (float(f"{t.value[1] / t.value[0]:.6g}") for t in (xres, yres))
        return as_voxel_size([float(meta["spacing"]), y, x], factor)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None


def _voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    if tif.is_ome and tif.ome_metadata:
        return _ome_voxel_size(tif.ome_metadata)
    if tif.is_imagej:
        return _imagej_voxel_size(tif)
    return None


class TiffVolume(VolumeBase):
    """A TIFF file as a (Z, Y, X) volume.

    Either ``planes``, a memory-mapped (Z, Y, X) or (Z, Y, X, S) view of the file, or
    ``pages``: the series' pages, one per z, with the (Y, X) or (Y, X, S) plane shape.
    """

    def __init__(
        self,
        path: Path,
        dtype: np.dtype[Any],
        voxel_size: VoxelSize | None,
        *,
        planes: np.ndarray | None = None,
        pages: tuple[list[Any], tuple[int, ...]] | None = None,
        tif: tifffile.TiffFile | None = None,
        writable: bool = False,
    ) -> None:
        if planes is not None:
            shape = planes.shape
        elif pages is not None:
            page_list, yxs = pages
            shape = (len(page_list), *yxs)
        else:
            raise ValueError("TiffVolume needs planes or pages")
        super().__init__(
            path, None, shape[:3], dtype, voxel_size, writable=writable, converts_rgb=len(shape) == 4
        )
        self._planes = planes
        self._pages = pages
        self._tif = tif
        self._sidecar = JsonFileAttrs(sidecar_path(path))

    @property
    def attrs(self) -> Any:
        return self._sidecar if self.writable else read_json(sidecar_path(self.path))

    def _page(self, z: int) -> np.ndarray:
        assert self._pages is not None  # _read reads pages only for volumes made from them (no planes)
        page_list, yxs = self._pages
        page = page_list[z]
        if page is None:
            raise VolumeError(f"{self.path}: cannot read file (corrupt or truncated: plane {z} is missing)")
        data = page.asarray()
        axes = page.axes
        keep = tuple(
            slice(None) if a in "YXS" or n != 1 else 0 for a, n in zip(axes, data.shape, strict=True)
        )
        data, axes = data[keep], "".join(a for a, k in zip(axes, keep, strict=True) if k != 0)
        if set(axes) - set("YXS"):
            raise VolumeError(f"{self.path}: page {z} has axes {page.axes}; expected Y, X and samples")
        plane = _to_zyxs(data, axes)[0]
        if plane.shape != yxs:
            raise VolumeError(
                f"{self.path}: cannot read file (corrupt or truncated: page {z} has shape {plane.shape}, expected {yxs})"
            )
        return plane

    def _read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        if self._planes is not None:
            block = np.array(self._planes[box])  # a copy: a slice of a memmap is a view into the file
        else:
            block = np.stack(
                [self._page(z)[box[1], box[2]] for z in range(box[0].start, box[0].stop, box[0].step)]
            )
        return to_gray(block, self.dtype) if block.ndim == 4 else block

    def _write(self, box: tuple[slice, slice, slice], block: np.ndarray) -> None:
        if self._planes is None or self._planes.ndim != 3:
            raise VolumeError(f"{self.path}: only uncompressed gray TIFF files can be written in place")
        self._planes[box] = block

    def _close(self) -> None:
        if isinstance(self._planes, np.memmap) and self.writable:
            self._planes.flush()
        self._planes = None
        if self._tif is not None:
            self._tif.close()


class _ErrorLog(logging.Handler):
    """Collects tifffile's ERROR records: it logs broken page chains instead of raising."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors() -> Iterator[_ErrorLog]:
    log = logging.getLogger("tifffile")
    handler = _ErrorLog()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def open_tiff(path: Path, writable: bool) -> TiffVolume:
    """Open a TIFF file as a (Z, Y, X) volume; memory-mapped when uncompressed and contiguous."""
    with _tifffile_errors() as errors:
        tif = tifffile.TiffFile(path)
        series_list = tif.series
    try:
        if errors.messages:
            # tifffile falls back to whatever pages it could parse: a silently shorter volume.
            raise VolumeError(f"{path}: cannot read file (corrupt or truncated: {errors.messages[0]})")
        if not series_list:
            raise VolumeError(f"{path}: holds no images (an empty or corrupt TIFF)")
        series = series_list[0]
        axes, shape = _stack_axes(series.axes, tuple(series.shape), path)
        voxel_size = _voxel_size(tif)
        if series.dataoffset is not None:
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            mapped = np.memmap(
                path,
                dtype=dtype,
                mode="r+" if writable else "r",
                offset=series.dataoffset,
                shape=tuple(series.shape),
            )
            planes = _to_zyxs(mapped.reshape(shape), axes)
            tif.close()
            return TiffVolume(path, series.dtype, voxel_size, planes=planes, writable=writable)
        if writable:
            raise VolumeError(
                f"{path}: compressed or tiled TIFF files cannot be written in place (use create_volume)"
            )
        dims = dict(zip(axes, shape, strict=True))
        planes_count = next((n for a, n in dims.items() if a not in "YXS"), 1)
        pages = list(series.pages)
        if len(pages) != planes_count:
            raise VolumeError(
                f"{path}: cannot read file (the series lists {len(pages)} pages for {planes_count} planes)"
            )
        yxs = tuple(dims[a] for a in "YXS" if a in dims)
        return TiffVolume(path, series.dtype, voxel_size, pages=(pages, yxs), tif=tif)
    except BaseException:
        tif.close()
        raise


def check_writable_dtype(path: Path, dtype: np.dtype[Any]) -> None:
    """TIFF stores bool as 1-bit pixels, which cannot be memory-mapped for chunk-wise writes."""
    if dtype.kind == "b":
        raise VolumeError(
            f"{path}: TIFF cannot store dtype bool chunk by chunk (use uint8 with 0/1 or 0/255)"
        )


def create_tiff(
    path: Path,
    shape: tuple[int, int, int],
    dtype: np.dtype[Any],
    voxel_size: VoxelSize | None,
    attrs: dict[str, Any],
) -> TiffVolume:
    """Create an uncompressed, memory-mapped TIFF with the voxel size in its metadata.

    uint8, uint16 and float32 volumes under 4 GB are ImageJ hyperstacks (Fiji reads their
    calibration directly); other dtypes and larger volumes are OME-TIFF.
    """
    check_writable_dtype(path, dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    kwargs: dict[str, Any]
    if dtype.name in _IMAGEJ_DTYPES and nbytes < _IMAGEJ_MAX_BYTES:
        metadata: dict[str, Any] = {"axes": "ZYX"}
        kwargs = {"imagej": True, "metadata": metadata}
        if voxel_size is not None:
            metadata.update(spacing=voxel_size[0], unit="nm")
            kwargs["resolution"] = (1.0 / voxel_size[2], 1.0 / voxel_size[1])
    else:
        metadata = {"axes": "ZYX"}
        if voxel_size is not None:
            for axis, size in zip("ZYX", voxel_size, strict=True):
                metadata[f"PhysicalSize{axis}"] = size
                metadata[f"PhysicalSize{axis}Unit"] = "nm"
        kwargs = {"ome": True, "metadata": metadata}
    planes = tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack", **kwargs)
    if attrs:
        JsonFileAttrs(sidecar_path(path)).update(attrs)
    return TiffVolume(path, dtype, voxel_size, planes=planes, writable=True)
