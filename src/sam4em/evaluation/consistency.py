"""Slice-to-slice consistency ("flicker") of binary (Z, Y, X) segmentations.

Definition
----------
For consecutive slices z and z+1 of one class mask, the *slice change* is ``1 - IoU(S_z, S_{z+1})``:
the fraction of the union of the two slices' foreground that is foreground in only one of them. Two
empty slices have change 0. The *flicker* of a volume is the mean slice change over its Z-1
consecutive pairs (0 for a single slice).

Real structures change between sections too, so flicker is only meaningful relative to the truth:
we report the prediction's flicker, the truth's flicker, their ratio (prediction / truth) and their
difference (prediction - truth). A temporally consistent prediction has a ratio near 1 and a
difference near 0; slice-wise predictions that jump between sections have a ratio above 1. When
the truth's flicker is 0 the ratio is 1 if the prediction's is also 0 and ``inf`` otherwise.

Voxels outside an optional mask are treated as background in both slices of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sam4em.evaluation.metrics import check_same_shape

__all__ = ["FlickerScores", "compare_flicker", "flicker", "flicker_scores", "slice_change"]


def slice_change(volume: ArrayLike, mask: ArrayLike | None = None) -> NDArray[np.float64]:
    """``1 - IoU`` between each slice z and z+1 of a boolean/0-1 (Z, Y, X) array; shape (Z-1,).

    Two empty consecutive slices give 0. Voxels where ``mask`` (same shape) is False are ignored.
    """
    v = np.asarray(volume).astype(bool, copy=False)
    if v.ndim != 3:
        raise ValueError(f"slice_change needs a (Z, Y, X) array, got shape {v.shape}")
    if mask is not None:
        m = np.asarray(mask).astype(bool, copy=False)
        check_same_shape(m.shape, v.shape, ("mask", "volume"))
        v = v & m
    if v.shape[0] < 2:
        return np.zeros(0)
    current, following = v[:-1], v[1:]
    intersection = np.count_nonzero(current & following, axis=(1, 2))
    union = np.count_nonzero(current | following, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 1.0 - intersection / union, 0.0)


def flicker(volume: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean slice change of a (Z, Y, X) boolean array; 0 when Z < 2 (see module docstring)."""
    changes = slice_change(volume, mask)
    return float(changes.mean()) if changes.size else 0.0


@dataclass(frozen=True)
class FlickerScores:
    """Flicker of prediction and truth and how they compare (see module docstring)."""

    pred: float
    gt: float
    ratio: float
    difference: float


def compare_flicker(pred_flicker: float, gt_flicker: float) -> FlickerScores:
    """Ratio (pred / gt; 1 when both are 0, ``inf`` when only gt is 0) and difference (pred - gt)."""
    ratio = pred_flicker / gt_flicker if gt_flicker > 0 else (1.0 if pred_flicker == 0 else np.inf)
    return FlickerScores(
        float(pred_flicker), float(gt_flicker), float(ratio), float(pred_flicker - gt_flicker)
    )


def flicker_scores(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> FlickerScores:
    """Flicker of a (Z, Y, X) prediction and truth of one class, and their ratio and difference."""
    p, g = np.asarray(pred), np.asarray(gt)
    check_same_shape(p.shape, g.shape)
    return compare_flicker(flicker(p, mask), flicker(g, mask))
