"""Evaluate a predicted EM volume against its ground truth, class by class, reading chunks along z.

:func:`evaluate_volumes` runs every metric of :mod:`~sam4em.evaluation.metrics`,
:mod:`~sam4em.evaluation.instance_metrics` and :mod:`~sam4em.evaluation.consistency` while holding
only ``chunk_slices`` slices (plus one halo slice on each side) in memory. Everything is exact, not
approximated per chunk: confusion counts and per-slice counts are summed, flicker carries the last
slice of the previous chunk, connected components are labelled per chunk and joined across chunk
borders with the same connectivity, and surface distances are computed from the collected surface
voxel coordinates (a k-d tree; equal to the distance-transform computation on the whole volume).
Memory therefore grows with the number of surface voxels and instances, not with the volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from sam4em.evaluation.consistency import compare_flicker, slice_change
from sam4em.evaluation.input_checks import CodeTally, check_probabilities
from sam4em.evaluation.instance_metrics import (
    Contingency,
    connectivity_structure,
    contingency_from_pairs,
    instance_scores_from_contingency,
    label_instances,
)
from sam4em.evaluation.metrics import (
    SemanticCounts,
    check_same_shape,
    normalize_voxel_size,
    slice_counts,
    slice_mean_scores,
    surface_distances_from_points,
    surface_voxels,
)

__all__ = ["VolumeLike", "evaluate_volumes", "format_table"]


class VolumeLike(Protocol):
    """What :func:`evaluate_volumes` needs of an input: numpy, zarr, h5py, dask and tensorstore fit."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def _join_map(n_labels: int, edges: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Map provisional labels 0..n to final labels; labels joined by an edge end up equal, 0 stays 0."""
    if n_labels == 0:
        return np.zeros(1, dtype=np.int64)
    pairs = np.concatenate(edges) if edges else np.empty((0, 2), dtype=np.int64)
    graph = sparse.coo_array(
        (np.ones(len(pairs)), (pairs[:, 0] - 1, pairs[:, 1] - 1)), shape=(n_labels, n_labels)
    )
    _, component = connected_components(graph, directed=False)
    return np.concatenate([[0], component.astype(np.int64) + 1])


def _touching_labels(
    below: NDArray[np.int64], above: NDArray[np.int64], plane: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """Label pairs (label in slice z, label in slice z+1) that touch under the neighbourhood ``plane``.

    ``plane`` is the (3, 3) z+1 layer of the 3D structuring element: offsets (dy, dx) that connect.
    """
    height, width = below.shape
    # One int64 key per pair: a 1D unique is much faster than np.unique(axis=0) on many pairs.
    base = int(above.max()) + 1
    keys = []
    for dy, dx in np.argwhere(plane) - 1:
        a = below[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        b = above[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)]
        both = (a > 0) & (b > 0)
        keys.append(a[both] * base + b[both])
    unique = np.unique(np.concatenate(keys))
    return np.stack([unique // base, unique % base], axis=1)


@dataclass
class _StreamingLabels:
    """Connected components of one binary volume fed slab by slab, with their overlaps."""

    connectivity: int | None
    n_labels: int = 0
    edges: list[NDArray[np.int64]] = field(default_factory=list)
    last_slice: NDArray[np.int64] | None = None

    def add(self, slab: NDArray[np.bool_]) -> NDArray[np.int64]:
        labels, n = label_instances(slab, self.connectivity)
        labels[labels > 0] += self.n_labels
        if self.last_slice is not None and slab.shape[0] > 0:
            plane = connectivity_structure(3, self.connectivity)[2]
            self.edges.append(_touching_labels(self.last_slice, labels[0], plane))
        if slab.shape[0] > 0:
            self.last_slice = labels[-1].copy()
        self.n_labels += n
        return labels


@dataclass
class _ClassAccumulator:
    """Running state of every metric for one class."""

    connectivity: int | None
    counts: list[NDArray[np.int64]] = field(default_factory=list)
    pred_surface: list[NDArray[np.float64]] = field(default_factory=list)
    gt_surface: list[NDArray[np.float64]] = field(default_factory=list)
    pred_change_sum: float = 0.0
    gt_change_sum: float = 0.0
    n_slice_pairs: int = 0
    last_pred: NDArray[np.bool_] | None = None
    last_gt: NDArray[np.bool_] | None = None
    overlaps: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = field(
        default_factory=list
    )
    pred_labels: _StreamingLabels = field(init=False)
    gt_labels: _StreamingLabels = field(init=False)

    def __post_init__(self) -> None:
        self.pred_labels = _StreamingLabels(self.connectivity)
        self.gt_labels = _StreamingLabels(self.connectivity)

    def add(
        self,
        pred_block: NDArray[np.bool_],
        gt_block: NDArray[np.bool_],
        mask_block: NDArray[np.bool_] | None,
        core: slice,
        z_offset: int,
        spacing: tuple[float, ...],
    ) -> None:
        """Add one block: ``core`` selects its own slices, the rest is halo for surface detection."""
        pred, gt = pred_block[core], gt_block[core]
        self.counts.append(slice_counts(pred, gt, None if mask_block is None else mask_block[core]))
        for block, points in ((pred_block, self.pred_surface), (gt_block, self.gt_surface)):
            coords = np.argwhere(surface_voxels(block)[core]).astype(np.float64)
            coords[:, 0] += z_offset
            points.append(coords * np.asarray(spacing))
        self._add_flicker(pred, gt)
        pred_ids = self.pred_labels.add(pred).ravel()
        gt_ids = self.gt_labels.add(gt).ravel()
        chunk = (
            sparse.coo_array(
                (np.ones(pred_ids.size, dtype=np.int64), (pred_ids, gt_ids)),
                shape=(self.pred_labels.n_labels + 1, self.gt_labels.n_labels + 1),
            )
            .tocsr()
            .tocoo()
        )
        self.overlaps.append((chunk.row.astype(np.int64), chunk.col.astype(np.int64), chunk.data))

    def _add_flicker(self, pred: NDArray[np.bool_], gt: NDArray[np.bool_]) -> None:
        if pred.shape[0] == 0:
            return
        if self.last_pred is not None and self.last_gt is not None:
            pred, gt = np.concatenate([self.last_pred[None], pred]), np.concatenate([self.last_gt[None], gt])
        pred_changes, gt_changes = slice_change(pred), slice_change(gt)
        self.pred_change_sum += float(pred_changes.sum())
        self.gt_change_sum += float(gt_changes.sum())
        self.n_slice_pairs += pred_changes.size
        self.last_pred, self.last_gt = pred[-1].copy(), gt[-1].copy()

    def contingency(self) -> Contingency:
        pred_map = _join_map(self.pred_labels.n_labels, self.pred_labels.edges)
        gt_map = _join_map(self.gt_labels.n_labels, self.gt_labels.edges)
        if self.overlaps:
            rows, cols, data = (np.concatenate(parts) for parts in zip(*self.overlaps, strict=True))
        else:
            rows = cols = data = np.empty(0, dtype=np.int64)
        return contingency_from_pairs(
            pred_map[rows], gt_map[cols], data, int(pred_map.max()), int(gt_map.max())
        )

    def results(self) -> dict[str, float | int]:
        per_slice = np.concatenate(self.counts) if self.counts else np.zeros((0, 4), dtype=np.int64)
        tp, fp, fn, tn = (int(v) for v in per_slice.sum(axis=0))
        counts = SemanticCounts(tp, fp, fn, tn)
        dice_mean, iou_mean = slice_mean_scores(per_slice)
        distances = surface_distances_from_points(
            np.concatenate([np.empty((0, 3)), *self.pred_surface]),
            np.concatenate([np.empty((0, 3)), *self.gt_surface]),
        )
        instances = instance_scores_from_contingency(self.contingency())
        n_pairs = self.n_slice_pairs
        flicker = compare_flicker(
            self.pred_change_sum / n_pairs if n_pairs else 0.0,
            self.gt_change_sum / n_pairs if n_pairs else 0.0,
        )
        return {
            "dice": counts.dice,
            "iou": counts.iou,
            "dice_slice_mean": dice_mean,
            "iou_slice_mean": iou_mean,
            "precision": counts.precision,
            "recall": counts.recall,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "hd95": distances.hd95,
            "assd": distances.assd,
            "hausdorff": distances.hausdorff,
            "n_pred_instances": instances.n_pred,
            "n_gt_instances": instances.n_gt,
            "ap50": instances.ap50,
            "ap75": instances.ap75,
            "msa": instances.msa,
            "voi_split": instances.voi_split,
            "voi_merge": instances.voi_merge,
            "voi": instances.voi,
            "arand": instances.arand,
            "rand_precision": instances.rand_precision,
            "rand_recall": instances.rand_recall,
            "flicker_pred": flicker.pred,
            "flicker_gt": flicker.gt,
            "flicker_ratio": flicker.ratio,
            "flicker_diff": flicker.difference,
        }


def _promote_2d(
    pred: VolumeLike, gt: VolumeLike, mask: VolumeLike | None, voxel_size: float | Sequence[float] | None
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None, float | Sequence[float] | None]:
    """Turn (Y, X) inputs (prediction (C, Y, X) with channels) into single-slice (1, Y, X) volumes."""
    gt_arr, pred_arr = np.asarray(gt)[None], np.asarray(pred)
    pred_arr = pred_arr[None] if pred_arr.ndim == 2 else pred_arr[:, None]
    mask_arr = None if mask is None else np.asarray(mask)[None]
    if voxel_size is not None and np.ndim(voxel_size) == 1:
        voxel_size = (1.0, *np.asarray(voxel_size, dtype=np.float64).tolist())
    return pred_arr, gt_arr, mask_arr, voxel_size


def evaluate_volumes(
    pred: VolumeLike,
    gt: VolumeLike,
    *,
    classes: Mapping[str, int],
    pred_classes: Mapping[str, int] | None = None,
    threshold: float = 0.5,
    voxel_size: float | Sequence[float] | None = None,
    mask: VolumeLike | None = None,
    chunk_slices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    connectivity: int | None = None,
    allow_absent_classes: bool = False,
) -> dict[str, Any]:
    """Run all semantic, surface, instance and consistency metrics per class.

    Args:
        pred: the prediction, (Z, Y, X) or (C, Z, Y, X) (channels first); numpy or any lazy array
            sliceable along z (zarr, h5py, dask, ...). Its foreground for a class is
            * (C, Z, Y, X): channel ``pred_classes[name]``, ``>= threshold`` if floating, else ``!= 0``;
            * (Z, Y, X) integer: ``pred == pred_classes[name]`` (a semantic label volume);
            * (Z, Y, X) floating (a probability map) or boolean: only with a single class,
              ``>= threshold`` resp. the mask itself.
        gt: (Z, Y, X) semantic label volume; class ``name``'s foreground is ``gt == classes[name]``.
        classes: class name -> label value in ``gt``, e.g. ``{"mitochondria": 1}``.
        pred_classes: class name -> label value / channel in ``pred``; default: channels in the order of
            ``classes`` for (C, Z, Y, X), else the ground truth's codes ``classes``.
        threshold: binarisation threshold of floating predictions.
        voxel_size: (z, y, x) voxel size in nm (or one number for isotropic voxels); surface
            distances are then in nm. None: distances in voxels.
        mask: optional (Z, Y, X) boolean evaluation mask; voxels where it is False count as
            background in prediction and truth and are left out of the true-negative count.
        chunk_slices: slices read per chunk along z; None reads the whole volume at once.
        progress: called as ``progress(slices_done, n_slices)`` after each chunk.
        connectivity: of the 3D connected components, 1..3; None = 3 (26-connectivity).
        allow_absent_classes: score a class whose code occurs nowhere in a ground truth that
            holds other codes, instead of refusing it as a likely typo.

        2D (Y, X) inputs (prediction (Y, X) or (C, Y, X)) are evaluated as one slice.

    Returns:
        ``{"shape": (Z, Y, X), "voxel_size": (z, y, x) or None, "distance_unit": "nm" or "voxel",
        "threshold", "connectivity", "chunk_slices", "classes": {name: metrics}}`` where metrics has
        the keys dice, iou, dice_slice_mean, iou_slice_mean, precision, recall, tp, fp, fn, tn,
        hd95, assd, hausdorff, n_pred_instances, n_gt_instances, ap50, ap75, msa, voi_split,
        voi_merge, voi, arand, rand_precision, rand_recall, flicker_pred, flicker_gt, flicker_ratio,
        flicker_diff (definitions and empty-volume conventions in the metric modules).

    Raises:
        ValueError: on shape mismatches (naming both shapes), unknown classes or ambiguous inputs,
            and on inputs that would score silently wrong (see :mod:`~sam4em.evaluation.input_checks`):
            NaN or out-of-range probabilities, a class code absent from the ground truth, a label-map
            prediction with other codes than those expected.
    """
    if len(gt.shape) == 2:
        pred, gt, mask, voxel_size = _promote_2d(pred, gt, mask, voxel_size)
    if len(gt.shape) != 3:
        raise ValueError(f"ground truth must be (Z, Y, X), got shape {tuple(gt.shape)}")
    gt_shape = tuple(int(s) for s in gt.shape)
    has_channels = len(pred.shape) == 4
    if len(pred.shape) not in (3, 4):
        raise ValueError(f"prediction must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(pred.shape)}")
    check_same_shape(tuple(pred.shape)[-3:], gt_shape, (_named(pred, "prediction"), _named(gt, "ground truth")))
    if mask is not None:
        check_same_shape(tuple(mask.shape), gt_shape, (_named(mask, "mask"), _named(gt, "ground truth")))
    if not classes:
        raise ValueError("classes must name at least one class")
    if pred_classes is None:
        # A channel stack lists the classes in order; a label map is assumed to use the gt's codes.
        pred_classes = {name: i for i, name in enumerate(classes)} if has_channels else classes
    pred_ids = dict(pred_classes)
    missing = sorted(set(classes) - set(pred_ids))
    if missing:
        raise ValueError(f"pred_classes lacks classes {missing}")
    pred_kind = np.dtype(pred.dtype).kind
    if not has_channels and pred_kind in "fb" and len(classes) > 1:
        raise ValueError(
            "a (Z, Y, X) floating or boolean prediction holds one class; pass (C, Z, Y, X) or a label volume"
        )
    if chunk_slices is not None and chunk_slices < 1:
        raise ValueError(f"chunk_slices must be at least 1, got {chunk_slices}")
    spacing = normalize_voxel_size(voxel_size, 3)

    def foreground(block: NDArray[Any], name: str) -> NDArray[np.bool_]:
        if has_channels:
            block = block[pred_ids[name]]
        if pred_kind == "f":
            return block >= threshold
        if has_channels or pred_kind == "b":
            return block != 0
        return block == pred_ids[name]

    n_slices = gt_shape[0]
    step = chunk_slices or max(n_slices, 1)
    accumulators = {name: _ClassAccumulator(connectivity) for name in classes}
    pred_name = _named(pred, "prediction")
    gt_codes = CodeTally(classes, _named(gt, "ground truth"))
    pred_codes = CodeTally(pred_ids, pred_name) if not has_channels and pred_kind in "iu" else None
    for z0 in range(0, n_slices, step):
        z1 = min(z0 + step, n_slices)
        # One halo slice on each side so surface voxels at chunk borders see their real neighbours.
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, n_slices)
        gt_block = np.asarray(gt[h0:h1])
        pred_block = np.asarray(pred[:, h0:h1] if has_channels else pred[h0:h1])
        mask_block = None if mask is None else np.asarray(mask[h0:h1]).astype(bool, copy=False)
        core = slice(z0 - h0, z1 - h0)
        gt_codes.add(gt_block[core])
        if pred_codes is not None:
            pred_codes.add(pred_block[core])
        if pred_kind == "f":
            check_probabilities(pred_block, pred_name)
        for name, accumulator in accumulators.items():
            pred_fg, gt_fg = foreground(pred_block, name), gt_block == classes[name]
            if mask_block is not None:
                pred_fg, gt_fg = pred_fg & mask_block, gt_fg & mask_block
            accumulator.add(pred_fg, gt_fg, mask_block, core, z0, spacing)
        if progress is not None:
            progress(z1, n_slices)
    gt_codes.check_ground_truth(gt, step, allow_absent_classes)
    if pred_codes is not None:
        pred_codes.check_prediction()
    return {
        "shape": gt_shape,
        "voxel_size": None if voxel_size is None else spacing,
        "distance_unit": "voxel" if voxel_size is None else "nm",
        "threshold": threshold,
        "connectivity": 3 if connectivity is None else connectivity,
        "chunk_slices": step,
        "classes": {name: accumulator.results() for name, accumulator in accumulators.items()},
    }


def _named(volume: Any, role: str) -> str:
    """``"prediction pred.zarr"`` for a volume opened from a file (errors must name it), else the role."""
    path = getattr(volume, "path", None)
    return role if path is None else f"{role} {path}"


_TABLE_COLUMNS: tuple[str, ...] = (
    "dice",
    "iou",
    "dice_slice_mean",
    "precision",
    "recall",
    "hd95",
    "assd",
    "ap50",
    "ap75",
    "msa",
    "voi_split",
    "voi_merge",
    "arand",
    "flicker_pred",
    "flicker_gt",
    "flicker_ratio",
)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.4f}")
    return str(value)


def format_table(results: Mapping[str, Any], columns: Sequence[str] = _TABLE_COLUMNS) -> str:
    """A plain-text table, one row per class, of the ``columns`` of :func:`evaluate_volumes`' result."""
    unit = results.get("distance_unit", "voxel")
    headers = ["class"] + [f"{c} [{unit}]" if c in ("hd95", "assd", "hausdorff") else c for c in columns]
    rows = [
        [name] + [_format_value(metrics[c]) for c in columns] for name, metrics in results["classes"].items()
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
