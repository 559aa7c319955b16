"""The built-in streaming metrics, one class per family: overlap, surface distance, instances, flicker.

Each keeps exact state across z-chunks (see :class:`~sam4em.evaluation.streaming_metric.StreamingMetric`)
and computes its scores with the pure functions of :mod:`~sam4em.evaluation.metrics`,
:mod:`~sam4em.evaluation.instance_metrics` and :mod:`~sam4em.evaluation.consistency`, where the
definitions and empty-volume conventions are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from sam4em.evaluation.consistency import FlickerScores, compare_flicker, slice_change
from sam4em.evaluation.instance_metrics import (
    InstanceScores,
    contingency_from_pairs,
    instance_scores_from_contingency,
)
from sam4em.evaluation.metrics import (
    SemanticCounts,
    SurfaceDistances,
    slice_counts,
    slice_mean_scores,
    surface_distances_from_points,
    surface_voxels,
)
from sam4em.evaluation.streaming_labels import StreamingLabels
from sam4em.evaluation.streaming_metric import ClassChunk, MetricContext, ScoreValue, StreamingMetric

__all__ = ["FlickerMetric", "InstanceMetric", "OverlapMetric", "OverlapScores", "SurfaceMetric"]


@dataclass(frozen=True)
class OverlapScores:
    """Voxel overlap of one class: confusion counts, their scores, and the per-slice mean scores."""

    counts: SemanticCounts
    #: mean over slices of Dice and IoU (see :func:`~sam4em.evaluation.metrics.slice_mean_scores`).
    dice_slice_mean: float
    iou_slice_mean: float


class OverlapMetric(StreamingMetric[OverlapScores]):
    """Dice, IoU, precision, recall and the confusion counts, from per-slice counts."""

    name = "overlap"
    keys = ("dice", "iou", "dice_slice_mean", "iou_slice_mean", "precision", "recall", "tp", "fp", "fn", "tn")
    table_keys = ("dice", "iou", "dice_slice_mean", "precision", "recall")

    def __init__(self, context: MetricContext) -> None:
        super().__init__(context)
        self.per_slice: list[NDArray[np.int64]] = []

    def add(self, chunk: ClassChunk) -> None:
        self.per_slice.append(slice_counts(chunk.pred, chunk.gt, chunk.mask))

    def result(self) -> OverlapScores:
        per_slice = np.concatenate([np.zeros((0, 4), dtype=np.int64), *self.per_slice])
        tp, fp, fn, tn = (int(v) for v in per_slice.sum(axis=0))
        dice_mean, iou_mean = slice_mean_scores(per_slice)
        return OverlapScores(SemanticCounts(tp, fp, fn, tn), dice_mean, iou_mean)

    def values(self, result: OverlapScores) -> dict[str, ScoreValue]:
        counts = result.counts
        return {
            "dice": counts.dice,
            "iou": counts.iou,
            "dice_slice_mean": result.dice_slice_mean,
            "iou_slice_mean": result.iou_slice_mean,
            "precision": counts.precision,
            "recall": counts.recall,
            "tp": counts.tp,
            "fp": counts.fp,
            "fn": counts.fn,
            "tn": counts.tn,
        }


class SurfaceMetric(StreamingMetric[SurfaceDistances]):
    """HD95, ASSD and Hausdorff distance from the surface voxels collected chunk by chunk.

    The halo slices give border voxels their real neighbours, so a chunk border adds no surface.
    """

    name = "surface"
    keys = ("hd95", "assd", "hausdorff")
    table_keys = ("hd95", "assd")
    distance_keys = keys

    def __init__(self, context: MetricContext) -> None:
        super().__init__(context)
        self.pred_points: list[NDArray[np.float64]] = []
        self.gt_points: list[NDArray[np.float64]] = []

    def add(self, chunk: ClassChunk) -> None:
        for block, points in ((chunk.pred_block, self.pred_points), (chunk.gt_block, self.gt_points)):
            coords = np.argwhere(surface_voxels(block)[chunk.core]).astype(np.float64)
            coords[:, 0] += chunk.z_offset
            points.append(coords * np.asarray(self.context.spacing))

    def result(self) -> SurfaceDistances:
        return surface_distances_from_points(
            np.concatenate([np.empty((0, 3)), *self.pred_points]),
            np.concatenate([np.empty((0, 3)), *self.gt_points]),
        )

    def values(self, result: SurfaceDistances) -> dict[str, ScoreValue]:
        return {"hd95": result.hd95, "assd": result.assd, "hausdorff": result.hausdorff}


class InstanceMetric(StreamingMetric[InstanceScores]):
    """AP50/75, mSA, VOI and adapted Rand from 3D connected components joined across chunks.

    Per chunk it keeps the overlap counts of provisional labels; :meth:`result` maps them to the
    joined components and builds the one contingency table of the whole volume.
    """

    name = "instances"
    keys = (
        "n_pred_instances", "n_gt_instances", "ap50", "ap75", "msa", "voi_split", "voi_merge", "voi",
        "arand", "rand_precision", "rand_recall",
    )  # fmt: skip
    table_keys = ("ap50", "ap75", "msa", "voi_split", "voi_merge", "arand")

    def __init__(self, context: MetricContext) -> None:
        super().__init__(context)
        self.pred_labels = StreamingLabels(context.connectivity)
        self.gt_labels = StreamingLabels(context.connectivity)
        self.overlaps: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = []

    def add(self, chunk: ClassChunk) -> None:
        pred_ids = self.pred_labels.add(chunk.pred).ravel()
        gt_ids = self.gt_labels.add(chunk.gt).ravel()
        pairs = (
            sparse.coo_array(
                (np.ones(pred_ids.size, dtype=np.int64), (pred_ids, gt_ids)),
                shape=(self.pred_labels.n_labels + 1, self.gt_labels.n_labels + 1),
            )
            .tocsr()
            .tocoo()
        )
        self.overlaps.append((pairs.row.astype(np.int64), pairs.col.astype(np.int64), pairs.data))

    def result(self) -> InstanceScores:
        pred_map, gt_map = self.pred_labels.final_labels(), self.gt_labels.final_labels()
        if self.overlaps:
            rows, cols, data = (np.concatenate(parts) for parts in zip(*self.overlaps, strict=True))
        else:
            rows = cols = data = np.empty(0, dtype=np.int64)
        contingency = contingency_from_pairs(
            pred_map[rows], gt_map[cols], data, int(pred_map.max()), int(gt_map.max())
        )
        return instance_scores_from_contingency(contingency)

    def values(self, result: InstanceScores) -> dict[str, ScoreValue]:
        return {
            "n_pred_instances": result.n_pred,
            "n_gt_instances": result.n_gt,
            "ap50": result.ap50,
            "ap75": result.ap75,
            "msa": result.msa,
            "voi_split": result.voi_split,
            "voi_merge": result.voi_merge,
            "voi": result.voi,
            "arand": result.arand,
            "rand_precision": result.rand_precision,
            "rand_recall": result.rand_recall,
        }


class FlickerMetric(StreamingMetric[FlickerScores]):
    """Slice-to-slice flicker of prediction and truth; the last slice of a chunk pairs with the next.

    The per-pair changes are kept (one number per slice) and averaged once at the end, so the
    result does not depend on where the chunk borders fall.
    """

    name = "flicker"
    keys = ("flicker_pred", "flicker_gt", "flicker_ratio", "flicker_diff")
    table_keys = ("flicker_pred", "flicker_gt", "flicker_ratio")

    def __init__(self, context: MetricContext) -> None:
        super().__init__(context)
        self.pred_changes: list[NDArray[np.float64]] = []
        self.gt_changes: list[NDArray[np.float64]] = []
        self.last: tuple[NDArray[np.bool_], NDArray[np.bool_]] | None = None

    def add(self, chunk: ClassChunk) -> None:
        pred, gt = chunk.pred, chunk.gt
        if pred.shape[0] == 0:
            return
        if self.last is not None:
            pred, gt = np.concatenate([self.last[0][None], pred]), np.concatenate([self.last[1][None], gt])
        self.pred_changes.append(slice_change(pred))
        self.gt_changes.append(slice_change(gt))
        self.last = (pred[-1].copy(), gt[-1].copy())

    def result(self) -> FlickerScores:
        pred_changes = np.concatenate([np.zeros(0), *self.pred_changes])
        gt_changes = np.concatenate([np.zeros(0), *self.gt_changes])
        n_pairs = pred_changes.size
        return compare_flicker(
            float(pred_changes.sum()) / n_pairs if n_pairs else 0.0,
            float(gt_changes.sum()) / n_pairs if n_pairs else 0.0,
        )

    def values(self, result: FlickerScores) -> dict[str, ScoreValue]:
        return {
            "flicker_pred": result.pred,
            "flicker_gt": result.gt,
            "flicker_ratio": result.ratio,
            "flicker_diff": result.difference,
        }
