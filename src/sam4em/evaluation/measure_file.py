"""`measure_file`: measure the objects of a label volume on disk into a CSV table (``sam4em measure``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sam4em.data.class_mapping import ClassMapping
from sam4em.evaluation.measure import ObjectsMode, measure_objects, write_csv
from sam4em.io import VolumeError, open_volume, parse_path_key
from sam4em.io.ome_zarr_output import is_ome_output
from sam4em.io.output_record import OutputRecord, read_output_record, require_complete

__all__ = ["measure_file"]


def _finished_record(volume: Any) -> OutputRecord | None:
    """The record of a finished sam4em segmentation output; None for other volumes. An unfinished one is
    refused: its missing blocks would be measured as empty."""
    found = read_output_record(volume.attrs)
    if found is not None:
        require_complete(found, volume)
    return found


def _name_instances(table: dict[str, np.ndarray], record: OutputRecord | None) -> None:
    """A sam4em instance output of several classes records each class's id range: name each object's class."""
    if record is None or record.instance_ranges is None or len(record.instance_ranges) != len(record.class_names):
        return
    names, ranges = record.class_names, record.instance_ranges
    ids, classes = table["label"], table["class"].astype(object)
    for name, (first, last) in zip(names, ranges, strict=True):
        classes[(ids >= first) & (ids <= last)] = str(name)
    table["class"] = classes.astype(str)


def _objects_mode(volume: Any, record: dict[str, Any], objects: str) -> ObjectsMode:
    """Objects as "ids" for instance volumes (sam4em instance outputs, 32/64-bit labels), else "components"."""
    if objects != "auto":
        return "ids" if objects == "ids" else "components"
    if record.get("output_type") == "instances" or np.dtype(volume.dtype).itemsize >= 4:
        return "ids"
    return "components"


def _class_codes(
    classes: str | None, record: dict[str, Any], key: str | None
) -> dict[str, tuple[int, ...]] | None:
    """Named codes from ``"mito=1,glia=2"``; else from a sam4em label output (class k+1, or 1 in an
    OME-Zarr output's ``labels/<class>`` mask); else None."""
    if classes:
        mapping = ClassMapping.parse(classes)
        return {name: mapping.codes(name) for name in mapping.names}
    if record.get("ome_zarr") and key is not None and key.startswith("labels/"):
        return {key.split("/")[1]: (1,)}
    if record.get("output_type") == "labels" and record.get("class_names"):
        return {str(name): (i + 1,) for i, name in enumerate(record["class_names"])}
    return None


def _refuse_ome_image(labels: str | os.PathLike[str], key: str | None) -> None:
    """A sam4em OME-Zarr output's root is the input EM image (for viewers): its gray values would be
    measured as class codes. Its label masks are under ``labels/<class>``."""
    path, parsed_key = parse_path_key(str(labels))
    key = key or parsed_key
    if is_ome_output(path) and not (key or "").strip("/").startswith("labels/"):
        classes = sorted(p.name for p in (Path(path) / "labels").iterdir() if p.is_dir()) if (Path(path) / "labels").is_dir() else []
        example = f"{path}:labels/{classes[0]}" if classes else f"{path}:labels/<class>"
        raise VolumeError(
            f"{path}: this OME-Zarr output's image is the input EM, not labels; measure one class's mask, "
            f"e.g. {example} (classes: {', '.join(classes) or 'none: it holds probabilities'})"
        )


def measure_file(
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labels_key: str | None = None,
    classes: str | None = None,
    probabilities: str | None = None,
    voxel_size: Sequence[float] | None = None,
    objects: Literal["auto", "ids", "components"] = "auto",
    chunk_z: int = 32,
    connectivity: int = 1,
    overwrite: bool = False,
) -> Path:
    """Measure every object of the label volume ``labels`` (any format, ``path:key``) into CSV ``out``.

    ``objects="auto"`` treats sam4em instance outputs and 32/64-bit labels as instance ids, anything
    else as class codes whose connected components are the objects; ``classes`` (``"mito=1,glia=2"``)
    names the codes, by default those of a sam4em label output or every code present.
    ``probabilities`` (``path:key``, same shape) adds each object's mean probability. The voxel size
    is ``voxel_size`` (z, y, x nm) or the file's. The CSV is written atomically; an existing one is
    replaced only with ``overwrite``. Returns ``out``.
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass --overwrite to replace it)")
    _refuse_ome_image(labels, labels_key)
    with open_volume(labels, labels_key) as volume:
        sizes = voxel_size if voxel_size is not None else volume.voxel_size
        if sizes is None:
            raise VolumeError(f"{volume.path}: holds no voxel size; pass --voxel-size 'Z,Y,X' in nm")
        if np.dtype(volume.dtype).kind not in "iub":
            raise VolumeError(
                f"{volume.path}: labels must be integers, not {volume.dtype} (pass a label volume)"
            )
        found = _finished_record(volume)
        record = {} if found is None else found.run
        mode = _objects_mode(volume, record, objects)
        codes = _class_codes(classes, record, volume.key) if mode == "components" else None
        if probabilities is None:
            table = measure_objects(
                volume, sizes, objects=mode, classes=codes, chunk_z=chunk_z, connectivity=connectivity
            )
        else:
            with open_volume(probabilities) as probs:
                _finished_record(probs)
                if probs.shape != volume.shape:
                    raise VolumeError(
                        f"{probs.path}: shape {probs.shape} differs from the labels' {volume.shape}"
                    )
                table = measure_objects(
                    volume, sizes, objects=mode, classes=codes, probabilities=probs,
                    chunk_z=chunk_z, connectivity=connectivity,
                )  # fmt: skip
    if mode == "ids":
        _name_instances(table, found)
    return write_csv(table, target, overwrite=overwrite)
