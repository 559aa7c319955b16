"""`check_request`: everything about a segmentation request that can be refused before the model loads.

Both ``sam4em segment`` and :func:`sam4em.inference.streaming.segment_to_file` run it first, so a bad
argument costs seconds, not a model load, and both refuse the same things with the same words: the
device exists; the output's format can hold the output type (and can take several writers for the
Dask path); the input opens read-only (file, key); the output is neither the input (also through a
symlink or a hard link) nor under a file, and is not replaced without ``overwrite``; the classes and
tile fit the model (read from its record, not built); and the output fits on its disk. Every refusal
is one line naming the file, the problem and the fix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam4em.claim import refuse_file_parent
from sam4em.devices import resolve_device
from sam4em.inference.options import OutputType, SegmentOptions
from sam4em.inference.output_files import output_dtype
from sam4em.inference.predictor import plan_tiling
from sam4em.io import VolumeError, has_scheme, open_volume, parse_path_key, resolve_path
from sam4em.io.formats import FORMATS, VolumeFormat, format_for_suffix, suffix_of
from sam4em.io.ome_zarr_output import OME_SUFFIX
from sam4em.models import SegmentationModel
from sam4em.models.declared import declared_classes_and_size

__all__ = ["CheckedRequest", "check_free_space", "check_request", "estimate_output_bytes", "select_classes"]

ModelSource = SegmentationModel | str | os.PathLike[str]

@dataclass(frozen=True)
class CheckedRequest:
    """The request as checked: specs kept as strings (``precomputed://`` is no file path)."""

    input: str
    input_key: str | None
    output: Path
    output_key: str | None
    #: The output's format (an entry of `sam4em.io.formats.FORMATS`).
    format: VolumeFormat
    ome: bool
    #: Of the input volume, (Z, Y, X).
    shape: tuple[int, int, int]


def check_request(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    options: SegmentOptions,
    model: ModelSource | None = None,
    *,
    multi_writer: bool = False,
) -> CheckedRequest:
    """Refuse a request that cannot succeed, without loading the model: the device, the output's format
    (known, able to hold the output type and its dtype, several writers), the output is not the input
    nor under a file and is not replaced without overwrite/resume, the classes and tile fit the
    model's record, and the output fits on its disk.

    Args:
        input_path, output_path: as for `segment_to_file` (``"vol.h5:key"`` carries the key).
        options: the run's options.
        model: a loaded model, run folder or model name whose classes and input size the classes and
            tile are checked against (from its record; nothing is built); None skips those checks.
        multi_writer: several processes will write the output's blocks at once (the Dask path).

    Raises:
        VolumeError, Sam4emError, FileNotFoundError: one line naming the file and the fix.
        ValueError: unknown classes or a tile that does not fit.
    """
    resolve_device(options.device)  # a device this machine lacks is refused first
    in_spec, in_key = split_spec(input_path, options.input_key)
    out_spec, out_key = split_spec(output_path, options.output_key)
    output = Path(out_spec)
    fmt = output_format(output, options.output_type, multi_writer=multi_writer)
    refuse_unstorable_dtype(output, fmt, options)
    ome = options.ome or output.name.lower().endswith(OME_SUFFIX)
    if ome and (not fmt.ome_ngff or out_key):
        raise VolumeError(f"{output}: OME-Zarr outputs are whole .zarr stores (use out{OME_SUFFIX}, without a key)")
    if not has_scheme(in_spec):
        refuse_same_path(in_spec, output)
    refuse_file_parent(output)
    with open_volume(in_spec, in_key) as volume:  # mode "r": the input is never opened for writing
        z, y, x = (int(s) for s in volume.shape)
    exists = output.exists()
    if exists and not (options.overwrite or options.resume):
        raise VolumeError(
            f"{output}: already exists (pass overwrite=True / --overwrite to replace it, "
            "or resume=True / --resume to finish an interrupted run)"
        )
    count = len(set(options.classes)) if options.classes else 1
    if model is not None:
        names, size = declared_classes_and_size(model)
        label = "the model" if isinstance(model, SegmentationModel) else os.fspath(model)
        count = len(select_classes(names, options.classes, label))
        try:
            plan_tiling((y, x), size, options.tile_shape, options.halo)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
    if not (options.resume and exists):  # a resumed output already holds its finished blocks
        check_free_space(output, estimate_output_bytes((z, y, x), options, count))
    return CheckedRequest(in_spec, in_key, output, out_key, fmt, ome, (z, y, x))


def split_spec(path: str | os.PathLike[str], key: str | None) -> tuple[str, str | None]:
    """(path, key) from a ``"vol.h5:key"`` spec (``key``, when given, wins); kept a string, as
    ``precomputed://`` is no file path."""
    spec, found = parse_path_key(os.fspath(path))
    key = key or found
    if not has_scheme(spec):
        # Absolute, so that workers started elsewhere (dask) find the same files.
        spec = os.path.abspath(spec)
    return spec, key or None


def output_format(path: Path, output_type: OutputType, *, multi_writer: bool = False) -> VolumeFormat:
    """The format of an output path (by its extension, from the format table), refused when it cannot
    hold an output (`VolumeFormat.output_suffixes`), hold ``output_type`` or (``multi_writer``) take
    several writers."""
    suffix = suffix_of(path)
    fmt = format_for_suffix(suffix)
    if fmt is None or suffix not in fmt.output_suffixes:
        raise VolumeError(
            f"{path}: unknown output format {suffix or '(no extension)'!r} "
            f"(use .zarr (recommended for large volumes) or {_suffixes(lambda f: True)})"
        )
    if output_type == "probs" and not fmt.container:
        raise VolumeError(
            f"{path}: probabilities are stored as one array per class and need a container "
            f"(use {_suffixes(lambda f: f.container)}, or write labels/instances)"
        )
    if multi_writer and output_type != "instances" and not fmt.multi_writer_safe:
        raise VolumeError(
            f"{path}: several processes can only write chunked stores at once "
            f"(use {_suffixes(lambda f: f.multi_writer_safe)})"
        )
    return fmt


def refuse_unstorable_dtype(path: Path, fmt: VolumeFormat, options: SegmentOptions) -> None:
    """Refuse before any model loads an output whose format cannot store the output's dtype."""
    dtype = output_dtype(options).name
    if fmt.stores_dtype is None or fmt.stores_dtype(dtype):
        return
    fix = "probs_dtype='float32' or 'uint8' in Python, or " if options.output_type == "probs" else ""
    raise VolumeError(
        f"{path}: {fmt.describe} cannot store {options.output_type} as {dtype} "
        f"(use {fix}a {_suffixes(lambda f: f.stores_dtype is None and f.container)} output)"
    )


def _suffixes(wanted: Callable[[VolumeFormat], bool]) -> str:
    """The main extension of each output format ``wanted`` accepts: '.tif, .h5, .zarr'."""
    found = [f.output_suffixes[0] for f in FORMATS.values() if f.output_suffixes and wanted(f)]
    return ", ".join(found)


def select_classes(names: Sequence[str], classes: Sequence[str] | None, model: str) -> tuple[int, ...]:
    """Indices into ``names`` of ``classes`` (None: all), without repeats, in the order given."""
    if classes is None:
        return tuple(range(len(names)))
    unknown = [c for c in classes if c not in names]
    if unknown or not classes:
        raise ValueError(
            f"{model}: unknown class(es) {', '.join(map(repr, unknown)) or '(none given)'} in classes "
            f"(--classes); the model predicts {', '.join(names)}"
        )
    return tuple(dict.fromkeys(list(names).index(c) for c in classes))


def refuse_same_path(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Refuse an output that is the input (also through a symlink or a hard link), or that lies inside an
    input folder or store: a folder of slices would read it as one more slice from then on, and a
    container would hold it beside its own arrays."""
    source, target = Path(input_path), Path(output_path)
    resolved = resolve_path(source)
    same = resolved == resolve_path(target)  # a link loop: one-line VolumeError
    if not same and source.exists() and target.exists():
        same = os.path.samefile(source, target)
    if same:
        raise VolumeError(f"{target}: is the input volume; write the result to another file")
    if source.is_dir() and resolve_path(target).is_relative_to(resolved):
        raise VolumeError(f"{target}: is inside the input {source}; write the result outside it")


def estimate_output_bytes(shape: Sequence[int], options: SegmentOptions, num_classes: int) -> int:
    """Uncompressed size of a segmentation of a (Z, Y, X) volume: shape x dtype x classes (probabilities
    in ``options.probs_dtype``)."""
    voxels = int(np.prod([int(s) for s in shape], dtype=np.int64))
    itemsize = output_dtype(options).itemsize
    if options.output_type == "probs":
        return voxels * num_classes * itemsize
    # Instances are labelled from a temporary uint8 label store written first (see `streaming`).
    return voxels * (itemsize + (1 if options.output_type == "instances" else 0))


def check_free_space(output_path: str | os.PathLike[str], needed: int) -> None:
    """Refuse to start an output of `needed` bytes on a disk with less free space."""
    target = Path(output_path).absolute()
    # The output and its missing parent folders are created later: measure the nearest existing folder.
    parent = next(p for p in target.parents if p.exists())
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise VolumeError(
            f"{target}: needs up to {_size(needed)} (uncompressed) but {parent} has only {_size(free)} free; "
            "free some space or write the output to another disk"
        )


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
