"""The files of a segmentation output: names of partial and temporary files, creation, progress
records in attrs, the atomic swap of a finished output, and the instance ids written at the end.

See :mod:`sam4em.inference.streaming` for the layout and :mod:`sam4em.io.output_record` for the attrs.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.inference.options import OutputType, SegmentOptions
from sam4em.inference.postprocess import probs_to_instances
from sam4em.inference.tiling import ZBlock
from sam4em.io import VolumeError, WritableVolume, create_volume, open_volume
from sam4em.io.formats import VolumeFormat
from sam4em.io.ome_zarr_output import open_output
from sam4em.io.output_record import INSTANCE_RANGES, OutputRecord, read_output_record

__all__ = [
    "CHUNK_YX",
    "OUTPUT_DTYPES",
    "create_arrays",
    "labels_store",
    "mark",
    "open_writable",
    "output_keys",
    "partial_sibling",
    "read_record",
    "remove",
    "swap_in",
    "write_instances",
    "z_chunk",
]

OUTPUT_DTYPES = {"labels": np.uint8, "instances": np.uint32}


def output_dtype(options: SegmentOptions) -> np.dtype[Any]:
    """The dtype an output is stored in: ``options.probs_dtype`` for probabilities, else by type."""
    if options.output_type == "probs":
        return np.dtype(options.probs_dtype)
    return np.dtype(OUTPUT_DTYPES[options.output_type])
#: In-plane chunk edge of outputs: 1 MB uint8 chunks, small enough to view remotely.
CHUNK_YX = 512


@contextmanager
def open_writable(path: Path, key: str | None) -> Iterator[WritableVolume]:
    """One array of an output (see :func:`sam4em.io.ome_zarr_output.open_output`), opened to write."""
    with open_output(path, key, mode="r+") as volume:
        if not isinstance(volume, WritableVolume):  # opened with mode "r+", so a format bug if it happens
            raise TypeError(f"{path}: {type(volume).__name__} opened to write has no __setitem__/attrs to write to")
        yield volume


def partial_sibling(path: Path) -> Path:
    """Where an ``overwrite`` run writes until it is complete."""
    # Keeps the extension, so the format is the same; hidden so it does not look like a result.
    return path.with_name(f".{path.stem}.sam4em-partial{path.suffix}")


def labels_store(written: Path) -> Path:
    """The temporary label store of an instance output (instances need the whole volume's labels)."""
    return written.with_name(f"{written.name}.partial-labels.zarr")


def remove_spills(output: Path) -> None:
    """Delete the forward-pass stores (`BlockJob.spill_path`) that a killed run left beside ``output``, its
    hidden sibling or their label stores: a run recomputes every unfinished block, and each store is as
    large as a block's float32 probabilities. Only while holding the output's claim."""
    for base in (output, partial_sibling(output)):
        for target in (base, labels_store(base)):
            for stale in output.parent.glob(f"{glob.escape(target.name)}.partial-forward-*.zarr"):
                remove(stale)


def _sidecar(path: Path) -> Path:
    """The JSON attrs file of a single-file output without its own metadata (TIFF, MRC)."""
    return path.with_name(path.name + ".attrs.json")


def remove(path: Path) -> None:
    """Delete a file or folder, and its attrs sidecar if there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    _sidecar(path).unlink(missing_ok=True)


def swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``new`` by renaming; a folder cannot replace another in one
    rename, so the old output is renamed aside first and deleted last."""
    old = target.with_name(f".{target.name}.sam4em-old")
    remove(old)
    if target.exists():
        os.replace(target, old)
    if _sidecar(target).exists():
        os.replace(_sidecar(target), _sidecar(old))
    os.replace(new, target)
    if _sidecar(new).exists():
        os.replace(_sidecar(new), _sidecar(target))
    remove(old)


def output_keys(
    fmt: VolumeFormat, key: str | None, output_type: OutputType, names: Sequence[str]
) -> tuple[str | None, ...]:
    """The arrays of a (non-OME) output: one per class for probabilities, else one."""
    if output_type == "probs":
        return tuple(f"{key.strip('/')}/{name}" if key else name for name in names)
    if fmt.container:
        return (key or output_type,)
    return (key,)  # single-volume formats: create_volume refuses a key with a clear message


def z_chunk(block_size: int) -> int:
    """Largest divisor of ``block_size`` up to 16: chunks never straddle two blocks, so blocks can be
    written by separate processes, and stay shallow enough for slice-wise viewing."""
    return max(d for d in range(1, min(block_size, 16) + 1) if block_size % d == 0)


def read_record(path: Path, key: str | None) -> OutputRecord | None:
    """The record of the sam4em output at ``path`` (``key``), else None (also for no output there)."""
    try:
        with open_output(path, key) as volume:
            attrs = dict(volume.attrs)
    except VolumeError:
        return None
    return read_output_record(attrs)


def mark(path: Path, keys: Sequence[str | None], **values: Any) -> None:
    """Set attrs ``values`` on the arrays ``keys`` of ``path``."""
    for key in keys:
        with open_writable(path, key) as volume:
            for name, value in values.items():
                volume.attrs[name] = value


def create_arrays(
    path: Path,
    keys: Sequence[str | None],
    shape: tuple[int, int, int],
    dtype: Any,
    chunks: tuple[int, int, int],
    voxel_size: Any,
    attrs: dict[str, Any],
) -> None:
    """Create the (Z, Y, X) arrays ``keys`` of a non-OME output."""
    for key in keys:
        create_volume(path, shape, dtype, key=key, chunks=chunks, voxel_size=voxel_size, attrs=attrs).close()


def write_instances(
    labels_path: Path,
    written: Path,
    keys: Sequence[str | None],
    blocks: Sequence[ZBlock],
    *,
    classes: int,
    min_size: int,
    watershed: bool,
) -> None:
    """Instance ids of the whole label store, written to the output block by block (in RAM, see
    :mod:`sam4em.inference.streaming`); ids are unique across the ``classes`` label values."""
    with open_volume(labels_path, None) as store:
        labels = store[:, :, :]
    instances = np.zeros(labels.shape, dtype=np.uint32)
    next_id = 0
    ranges = []  # per class, its ids: so readers can tell the classes apart
    for value in range(1, classes + 1):
        ids = probs_to_instances(labels == value, min_size=min_size, watershed=watershed)
        found = ids > 0
        instances[found] = ids[found] + np.uint32(next_id)
        ranges.append([next_id + 1, next_id + int(ids.max(initial=0))])
        next_id = ranges[-1][1]
    for value, key in enumerate(keys, start=1):
        # OME-Zarr outputs hold each class's instances apart (labels/<class>); others all in one array.
        ids = instances if len(keys) == 1 else np.where(labels == value, instances, 0)
        with open_writable(written, key) as out:
            for block in blocks:
                out[block.write] = ids[block.write]
            out.attrs["sam4em_instances"] = next_id
            out.attrs[INSTANCE_RANGES] = ranges
