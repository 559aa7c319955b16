"""Per-object measurements of a (Z, Y, X) label volume: size, volume, surface, centroid, bounding box.

Two passes keep memory bounded for volumes of any depth:

1. the labels are read in z-chunks of ``chunk_z`` slices; each chunk's pieces of objects get voxel
   counts, coordinate sums, bounding boxes, a seed voxel and (with probabilities) probability sums.
   Pieces of one object in different chunks are joined before anything is reported, so an object
   that crosses chunk boundaries is measured once: in ``objects="ids"`` mode by their common id, in
   ``objects="components"`` mode by joining the pieces that touch across each boundary;
2. surface areas need the whole object: each object's bounding box (plus one voxel) is read on its
   own, the object is cut out of it and meshed by marching cubes (scikit-image) with the voxel size
   as spacing. Only one crop is in memory at a time; an object as large as the volume needs the
   volume's labels in memory once.

Coordinates (centroid, bounding box) are voxel indices (z, y, x), as ``skimage.measure.regionprops``
gives them (bounding boxes: start inclusive, stop exclusive); volumes are in nm³ and areas in nm².
Surfaces are closed at the volume's border (the mask is padded with background before meshing).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes, mesh_surface_area

from sam4em.atomic import write_atomically
from sam4em.evaluation.streaming_labels import join_map, touching_labels

__all__ = ["COLUMNS", "ObjectsMode", "measure_objects", "write_csv"]

ObjectsMode = Literal["ids", "components"]
#: Columns of the table, in order; ``mean_probability`` only when probabilities are given.
COLUMNS = (
    "class", "label", "voxel_count", "volume_nm3", "surface_area_nm2",
    "centroid_z", "centroid_y", "centroid_x",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
)  # fmt: skip


class _Pieces:
    """Statistics of every object piece seen so far, one row per piece (pieces of a chunk are
    numbered in raster order of their first voxel, chunks in z order)."""

    def __init__(self, with_probs: bool) -> None:
        self.rows: list[np.ndarray] = []  # per chunk: (n, 14) float64
        self.classes: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.with_probs = with_probs
        self.count = 0

    def add(
        self, local: np.ndarray, n: int, z0: int, cls: int, ids: np.ndarray, probs: np.ndarray | None
    ) -> None:
        """Add the pieces 1..n of ``local`` (a (z, Y, X) chunk starting at slice ``z0``)."""
        if n == 0:
            return
        flat = np.flatnonzero(local)
        lab = local.ravel()[flat]
        coords = np.unravel_index(flat, local.shape)
        rows = np.zeros((n, 14), dtype=np.float64)
        rows[:, 0] = np.bincount(lab, minlength=n + 1)[1:]
        for axis in range(3):
            rows[:, 1 + axis] = np.bincount(lab, weights=coords[axis], minlength=n + 1)[1:]
        rows[:, 1] += rows[:, 0] * z0
        boxes = ndimage.find_objects(local, max_label=n)
        for i, box in enumerate(boxes):
            rows[i, 4:7] = [box[0].start + z0, box[1].start, box[2].start]
            rows[i, 7:10] = [box[0].stop + z0, box[1].stop, box[2].stop]
        _, first = np.unique(lab, return_index=True)  # raster-first voxel of each piece
        rows[:, 10] = coords[0][first] + z0
        rows[:, 11] = coords[1][first]
        rows[:, 12] = coords[2][first]
        if probs is not None:
            rows[:, 13] = np.bincount(lab, weights=probs.ravel()[flat], minlength=n + 1)[1:]
        self.rows.append(rows)
        self.classes.append(np.full(n, cls, dtype=np.int64))
        self.ids.append(np.asarray(ids, dtype=np.int64))
        self.count += n


def _scan(
    labels: Any,
    objects: ObjectsMode,
    codes: Sequence[tuple[int, ...]],
    probabilities: Any,
    chunk_z: int,
    connectivity: int,
) -> tuple[_Pieces, np.ndarray]:
    """First pass: the pieces of all chunks and, for each, the piece number its object is joined to."""
    pieces = _Pieces(with_probs=probabilities is not None)
    edges: list[np.ndarray] = []  # (k, 2) piece numbers (+1) that touch across a chunk boundary
    structure = ndimage.generate_binary_structure(3, connectivity)
    previous: np.ndarray | None = None
    for z0 in range(0, labels.shape[0], chunk_z):
        chunk = np.asarray(labels[z0 : z0 + chunk_z])
        probs = (
            None if probabilities is None else _as_probability(np.asarray(probabilities[z0 : z0 + chunk_z]))
        )
        start = pieces.count
        if objects == "ids":
            values, inverse = np.unique(chunk, return_inverse=True)
            local = inverse.reshape(chunk.shape).astype(np.int64)
            if values[0] != 0:  # no background in this chunk: number pieces from 1 anyway
                values, local = np.concatenate([[0], values]), local + 1
            pieces.add(local, len(values) - 1, z0, 0, values[1:], probs)
        else:
            numbered = np.zeros(chunk.shape, dtype=np.int64)
            for cls, class_codes in enumerate(codes):
                components, n = ndimage.label(np.isin(chunk, class_codes), structure=structure)
                offset = pieces.count - start
                pieces.add(components, n, z0, cls, np.zeros(n), probs)
                numbered[components > 0] = components[components > 0] + offset
            first, last = (np.where(plane > 0, plane + start, 0) for plane in (numbered[0], numbered[-1]))
            if previous is not None:
                # Classes never touch: a voxel has one class, so pairs always join pieces of one class.
                edges.append(touching_labels(previous, first, structure[2]))
            previous = last
    if objects == "ids":
        groups = np.concatenate(pieces.ids) if pieces.ids else np.zeros(0, dtype=np.int64)
    else:
        groups = join_map(pieces.count, edges)[1:]
    # Every piece's root: the first piece of its object (np.unique's first index), so objects are
    # numbered in the order their first piece was read.
    _, first_piece, group_of = np.unique(groups, return_index=True, return_inverse=True)
    return pieces, first_piece[group_of]


def _as_probability(values: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as float64 (sums follow): sam4em stores uint8 probabilities as round(p * 255).

    Decoded here rather than with `sam4em.inference.postprocess.from_uint8_probs`: that is float32, and
    importing the inference package would load torch into a measurement that needs none.
    """
    return values / 255.0 if values.dtype == np.uint8 else values.astype(np.float64)


def _id_mask(crop: np.ndarray, origin: list[int], *, value: int) -> np.ndarray:
    """The voxels of the object with id ``value`` in ``crop``."""
    return crop == value


def _component_mask(
    crop: np.ndarray, origin: list[int], *, codes: Any, seed: Any, structure: np.ndarray
) -> np.ndarray:
    """The connected component of the class ``codes`` in ``crop`` that holds the voxel ``seed``
    (volume coordinates; ``origin`` is the crop's corner)."""
    parts, _ = ndimage.label(np.isin(crop, codes), structure=structure)
    return parts == parts[tuple(int(s) - o for s, o in zip(seed, origin, strict=True))]


def _surface_area(labels: Any, box: np.ndarray, mask_of: Any, spacing: tuple[float, float, float]) -> float:
    """Marching-cubes area (nm²) of the object ``mask_of(crop, origin)`` cuts out of its box's crop."""
    shape = labels.shape
    lo = [max(0, int(box[i]) - 1) for i in range(3)]
    hi = [min(shape[i], int(box[3 + i]) + 1) for i in range(3)]
    crop = np.asarray(labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    mask = np.pad(mask_of(crop, lo), 1).astype(np.float32)
    vertices, faces, _, _ = marching_cubes(mask, level=0.5, spacing=spacing)
    return float(mesh_surface_area(vertices, faces))


def measure_objects(
    labels: Any,
    voxel_size: Sequence[float],
    *,
    objects: ObjectsMode = "components",
    classes: Mapping[str, int | Sequence[int]] | None = None,
    probabilities: Any = None,
    chunk_z: int = 32,
    connectivity: int = 1,
) -> dict[str, np.ndarray]:
    """Measure every object of ``labels`` (Z, Y, X): a NumPy array or a lazy volume (``open_volume``).

    Args:
        labels: integer labels, read ``chunk_z`` slices at a time.
        voxel_size: (z, y, x) in nm.
        objects: ``"ids"``: every nonzero value is one object (instance ids; class ``"object"``);
            ``"components"``: objects are the connected components of each class's voxels.
        classes: components mode: class name -> label code(s); default every nonzero code present,
            named by its value.
        probabilities: (Z, Y, X) probabilities (float in [0, 1], or uint8 as p x 255) of the objects'
            class, giving the column ``mean_probability``.
        chunk_z: slices per chunk of the first pass (memory ~ chunk_z x Y x X x 8 bytes).
        connectivity: 1 (faces), 2 (+ edges) or 3 (+ corners) for components, as in scipy.ndimage.

    Returns:
        Columns (see ``COLUMNS``) of one row per object. ids: sorted by id, ``label`` is the id;
        components: sorted by class, then by the object's first voxel in raster order, ``label`` is
        the component number within its class, as ``skimage.measure.label`` numbers ``labels == code``.
    """
    if len(labels.shape) != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {tuple(labels.shape)}")
    if probabilities is not None and tuple(probabilities.shape) != tuple(labels.shape):
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and labels {tuple(labels.shape)} differ in shape"
        )
    if chunk_z < 1 or connectivity not in (1, 2, 3) or objects not in ("ids", "components"):
        raise ValueError("need chunk_z >= 1, connectivity 1, 2 or 3 and objects 'ids' or 'components'")
    spacing = (float(voxel_size[0]), float(voxel_size[1]), float(voxel_size[2]))
    names, codes = _classes(labels, objects, classes, chunk_z)
    pieces, roots = _scan(labels, objects, codes, probabilities, chunk_z, connectivity)
    table = _reduce(pieces, roots, names, objects, spacing)
    structure = ndimage.generate_binary_structure(3, connectivity)
    areas = []
    for row in range(len(table["label"])):
        box = np.array([table[f"bbox_{a}{e}"][row] for e in "01" for a in "zyx"])
        seed = table["_seed"][row]
        mask_of: Callable[[np.ndarray, list[int]], np.ndarray]
        if objects == "ids":
            mask_of = partial(_id_mask, value=int(table["label"][row]))
        else:
            cls_codes = codes[names.index(str(table["class"][row]))]
            mask_of = partial(_component_mask, codes=cls_codes, seed=seed, structure=structure)

        areas.append(_surface_area(labels, box, mask_of, spacing))
    table["surface_area_nm2"] = np.array(areas, dtype=np.float64)
    del table["_seed"]
    return {name: table[name] for name in (*COLUMNS, "mean_probability") if name in table}


def _classes(
    labels: Any, objects: ObjectsMode, classes: Mapping[str, int | Sequence[int]] | None, chunk_z: int
) -> tuple[list[str], list[tuple[int, ...]]]:
    if objects == "ids":
        return ["object"], [()]
    if classes is None:
        found: set[int] = set()
        for z0 in range(0, labels.shape[0], chunk_z):
            found.update(int(v) for v in np.unique(np.asarray(labels[z0 : z0 + chunk_z])))
        found.discard(0)
        return [str(v) for v in sorted(found)], [(v,) for v in sorted(found)]
    names = list(classes)
    codes = [
        (int(c),) if isinstance(c, (int, np.integer)) else tuple(int(v) for v in c) for c in classes.values()
    ]
    return names, codes


def _reduce(
    pieces: _Pieces,
    roots: np.ndarray,
    names: list[str],
    objects: ObjectsMode,
    spacing: tuple[float, float, float],
) -> dict[str, np.ndarray]:
    """Join the pieces of each object and order the objects (class, then first voxel)."""
    if pieces.count == 0:
        rows, classes, ids = np.zeros((0, 14)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        rows, classes, ids = (
            np.concatenate(pieces.rows),
            np.concatenate(pieces.classes),
            np.concatenate(pieces.ids),
        )
    # Roots are each object's earliest piece, whose seed is the object's raster-first voxel.
    unique_roots, group = np.unique(roots, return_inverse=True)
    # ids: by id, as regionprops; components: by class, then raster order of the first voxel.
    order = np.lexsort((ids[unique_roots],) if objects == "ids" else (unique_roots, classes[unique_roots]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    group = rank[group]
    n = len(unique_roots)
    count = np.bincount(group, weights=rows[:, 0], minlength=n)
    sums = np.stack([np.bincount(group, weights=rows[:, 1 + a], minlength=n) for a in range(3)], axis=1)
    lo = np.full((n, 3), np.inf)
    hi = np.full((n, 3), -np.inf)
    np.minimum.at(lo, group, rows[:, 4:7])
    np.maximum.at(hi, group, rows[:, 7:10])
    root_rows = unique_roots[order]
    obj_class = classes[root_rows]
    if objects == "ids":
        label = ids[root_rows]
    else:
        label = np.zeros(n, dtype=np.int64)
        for cls in np.unique(obj_class):
            label[obj_class == cls] = np.arange(1, int(np.sum(obj_class == cls)) + 1)
    table: dict[str, np.ndarray] = {
        "class": np.array([names[c] for c in obj_class], dtype=object),
        "label": label,
        "voxel_count": count.astype(np.int64),
        "volume_nm3": count * float(np.prod(spacing)),
        "_seed": rows[root_rows, 10:13].astype(np.int64),
    }
    for a, axis in enumerate("zyx"):
        table[f"centroid_{axis}"] = sums[:, a] / np.maximum(count, 1)
    for e, bound in (("0", lo), ("1", hi)):
        for a, axis in enumerate("zyx"):
            table[f"bbox_{axis}{e}"] = bound[:, a].astype(np.int64)
    if pieces.with_probs:
        table["mean_probability"] = np.bincount(group, weights=rows[:, 13], minlength=n) / np.maximum(
            count, 1
        )
    return table


def write_csv(
    table: Mapping[str, np.ndarray], path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``table`` (columns of equal length) as CSV, atomically: a temporary file renamed into place.

    Refuses to replace an existing file unless ``overwrite``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True / --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(table)

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(names)
            for row in zip(*(table[name] for name in names), strict=True):
                writer.writerow([_cell(v) for v in row])

    write_atomically(target, write)
    return target


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)
