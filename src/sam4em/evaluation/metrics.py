"""Semantic (per-class, binary) segmentation metrics for EM volumes.

All functions are pure and take one class at a time as a boolean or 0/1 array of shape (Z, Y, X);
2D (Y, X) arrays are accepted and treated as a single slice. Axis order is always (Z, Y, X) and a
voxel size is given in the same order, in nm.

Conventions
-----------
* Empty-vs-empty is perfect: Dice, IoU, precision and recall are 1 when prediction and truth are
  both empty, for a whole volume and for each slice of the slice-wise means.
* Precision is 0 when nothing is predicted but the truth is not empty; recall is 0 when the truth is
  empty but something is predicted.
* Surface distances (HD95, ASSD, Hausdorff) are 0 when both sides are empty and ``inf`` when exactly
  one side is empty. A surface voxel is a foreground voxel with a face-adjacent (6-connected in 3D,
  4-connected in 2D) background neighbour; space outside the array counts as background, so
  foreground touching the array border is surface there. HD95 is the 95th percentile of the pooled
  distances of both directions (medpy's ``hd95``); ASSD is the mean of the two directed mean
  distances (medpy's ``assd``). Distances are between voxel centres, scaled by the voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "SemanticCounts",
    "SurfaceDistances",
    "check_same_shape",
    "confusion_counts",
    "dice",
    "iou",
    "normalize_voxel_size",
    "slice_counts",
    "slice_mean_scores",
    "slice_scores",
    "surface_distances",
    "surface_distances_from_points",
    "surface_voxels",
]


def check_same_shape(
    first: Sequence[int], second: Sequence[int], names: tuple[str, str] = ("prediction", "ground truth")
) -> None:
    """Raise ``ValueError`` naming both shapes when they differ."""
    if tuple(first) != tuple(second):
        raise ValueError(
            f"shape mismatch: {names[0]} has shape {tuple(first)} but {names[1]} has shape {tuple(second)}; "
            "compare volumes of the same region and size"
        )


def _as_bool(array: ArrayLike) -> NDArray[np.bool_]:
    return np.asarray(array).astype(bool, copy=False)


def _binary_pair(
    pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_] | None]:
    p, g = _as_bool(pred), _as_bool(gt)
    check_same_shape(p.shape, g.shape)
    if mask is None:
        return p, g, None
    m = _as_bool(mask)
    check_same_shape(m.shape, g.shape, ("mask", "ground truth"))
    return p, g, m


def _ratio(numerator: float, denominator: float, if_undefined: float) -> float:
    return float(numerator / denominator) if denominator > 0 else if_undefined


@dataclass(frozen=True)
class SemanticCounts:
    """Voxel confusion counts of one class; sum them over z-chunks to evaluate a volume chunk-wise.

    ``tn`` counts only voxels inside the evaluation mask when one is used.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: SemanticCounts) -> SemanticCounts:
        return SemanticCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def dice(self) -> float:
        """2TP / (2TP + FP + FN); 1 when prediction and truth are both empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN) (Jaccard index); 1 when prediction and truth are both empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, 1.0)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1 when both are empty, 0 when nothing is predicted but truth exists."""
        return _ratio(self.tp, self.tp + self.fp, 1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1 when both are empty, 0 when truth is empty but something is predicted."""
        return _ratio(self.tp, self.tp + self.fn, 1.0 if self.fp == 0 else 0.0)


def slice_counts(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> NDArray[np.int64]:
    """Per-slice confusion counts.

    Args:
        pred, gt: boolean or 0/1 arrays of shape (Z, Y, X) (or (Y, X), one slice).
        mask: optional boolean array of the same shape; voxels where it is False are not counted.

    Returns:
        int64 array of shape (Z, 4) with columns (tp, fp, fn, tn).
    """
    p, g, m = _binary_pair(pred, gt, mask)
    if p.ndim == 2:
        p, g = p[None], g[None]
        m = None if m is None else m[None]
    valid = np.ones_like(g) if m is None else m
    axes = tuple(range(1, p.ndim))
    tp = np.count_nonzero(p & g & valid, axis=axes)
    fp = np.count_nonzero(p & ~g & valid, axis=axes)
    fn = np.count_nonzero(~p & g & valid, axis=axes)
    tn = np.count_nonzero(valid, axis=axes) - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def confusion_counts(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> SemanticCounts:
    """Whole-array confusion counts of boolean/0-1 arrays of equal shape ((Z, Y, X) or (Y, X))."""
    tp, fp, fn, tn = (int(v) for v in slice_counts(pred, gt, mask).sum(axis=0))
    return SemanticCounts(tp, fp, fn, tn)


def slice_scores(counts: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-slice Dice and IoU from (Z, 4) counts as returned by :func:`slice_counts`.

    A slice where prediction and truth are both empty scores 1 (perfect). Slices with no voxel inside
    the mask (all four counts 0) score NaN so that callers can leave them out.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn, tn = counts.T
    errors = fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice_z = np.where(tp + errors > 0, 2 * tp / (2 * tp + errors), 1.0)
        iou_z = np.where(tp + errors > 0, tp / (tp + errors), 1.0)
    evaluated = (tp + errors + tn) > 0
    return np.where(evaluated, dice_z, np.nan), np.where(evaluated, iou_z, np.nan)


def slice_mean_scores(counts: NDArray[np.int64]) -> tuple[float, float]:
    """Mean over slices of Dice and IoU from (Z, 4) per-slice counts.

    Slices where prediction and truth are both empty score 1; slices entirely outside the mask are
    left out; if no slice is left, both means are 1 (nothing to get wrong).
    """
    dice_z, iou_z = slice_scores(counts)
    evaluated = ~np.isnan(dice_z)
    if not evaluated.any():
        return 1.0, 1.0
    return float(dice_z[evaluated].mean()), float(iou_z[evaluated].mean())


def dice(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Dice coefficient over the whole array ((Z, Y, X) or (Y, X)); 1 when both are empty."""
    return confusion_counts(pred, gt, mask).dice


def iou(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> float:
    """IoU (Jaccard index) over the whole array ((Z, Y, X) or (Y, X)); 1 when both are empty."""
    return confusion_counts(pred, gt, mask).iou


def normalize_voxel_size(voxel_size: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel size as ``ndim`` positive floats in axis order (Z, Y, X); None means 1 per axis."""
    if voxel_size is None:
        return (1.0,) * ndim
    sizes = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (ndim,))
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError(f"voxel size must be positive and finite, got {voxel_size!r}")
    return tuple(float(s) for s in sizes)


def surface_voxels(binary: ArrayLike) -> NDArray[np.bool_]:
    """Foreground voxels with a face-adjacent background neighbour; outside the array is background."""
    b = _as_bool(binary)
    structure = ndimage.generate_binary_structure(b.ndim, 1)
    return b & ~ndimage.binary_erosion(b, structure=structure, border_value=0)


@dataclass(frozen=True)
class SurfaceDistances:
    """Symmetric surface distances in the unit of the voxel size (nm when it is given in nm)."""

    hd95: float
    assd: float
    hausdorff: float

    @classmethod
    def for_empty(cls, pred_empty: bool, gt_empty: bool) -> SurfaceDistances:
        """0 when both sides are empty, ``inf`` when exactly one is (no surface to measure to)."""
        if pred_empty and gt_empty:
            return cls(0.0, 0.0, 0.0)
        if pred_empty or gt_empty:
            return cls(np.inf, np.inf, np.inf)
        raise ValueError("for_empty needs at least one empty side")

    @classmethod
    def from_directed(
        cls, pred_to_gt: NDArray[np.float64], gt_to_pred: NDArray[np.float64]
    ) -> SurfaceDistances:
        """Combine the distances of every prediction surface voxel to the truth surface and back.

        Both empty: all 0. Exactly one empty: all ``inf``.
        """
        if pred_to_gt.size == 0 or gt_to_pred.size == 0:
            return cls.for_empty(pred_to_gt.size == 0, gt_to_pred.size == 0)
        pooled = np.concatenate([pred_to_gt, gt_to_pred])
        return cls(
            hd95=float(np.percentile(pooled, 95)),
            assd=float((pred_to_gt.mean() + gt_to_pred.mean()) / 2),
            hausdorff=float(pooled.max()),
        )


def surface_distances(
    pred: ArrayLike, gt: ArrayLike, voxel_size: float | Sequence[float] | None = None
) -> SurfaceDistances:
    """HD95, ASSD and Hausdorff distance between the surfaces of two binary arrays.

    Args:
        pred, gt: boolean/0-1 arrays of shape (Z, Y, X) (or (Y, X)).
        voxel_size: per-axis voxel size in axis order (Z, Y, X), e.g. nm; None means 1 voxel per axis.

    Returns:
        :class:`SurfaceDistances`; 0 when both are empty, ``inf`` when exactly one is empty.
    """
    p, g, _ = _binary_pair(pred, gt, None)
    sampling = normalize_voxel_size(voxel_size, p.ndim)
    surface_p, surface_g = surface_voxels(p), surface_voxels(g)
    if not surface_p.any() or not surface_g.any():
        return SurfaceDistances.for_empty(not surface_p.any(), not surface_g.any())
    to_gt = ndimage.distance_transform_edt(~surface_g, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~surface_p, sampling=sampling)
    return SurfaceDistances.from_directed(to_gt[surface_p], to_pred[surface_g])


def surface_distances_from_points(
    pred_points: NDArray[np.float64], gt_points: NDArray[np.float64]
) -> SurfaceDistances:
    """Surface distances from surface-voxel coordinates already scaled to physical units.

    This is the chunk-friendly counterpart of :func:`surface_distances`: only the surface voxels of a
    volume have to be collected, not the whole volume. Points are arrays of shape (N, ndim) in axis
    order (Z, Y, X); the result equals :func:`surface_distances` for the same surfaces.
    """
    if len(pred_points) == 0 or len(gt_points) == 0:
        return SurfaceDistances.for_empty(len(pred_points) == 0, len(gt_points) == 0)
    # Nearest-neighbour queries dominate evaluation time on large volumes; use every core.
    pred_to_gt, _ = cKDTree(gt_points).query(pred_points, workers=-1)
    gt_to_pred, _ = cKDTree(pred_points).query(gt_points, workers=-1)
    return SurfaceDistances.from_directed(
        np.asarray(pred_to_gt, dtype=np.float64), np.asarray(gt_to_pred, dtype=np.float64)
    )
