"""Metrics for EM segmentation: semantic, surface, instance and slice-to-slice consistency.

All metric functions are pure and take (Z, Y, X) arrays (axis order z, y, x; voxel sizes in nm in
the same order). :func:`evaluate_volumes` runs them all per class over in-memory or lazy volumes,
chunk by chunk along z, and :func:`format_table` renders its result.
"""

from __future__ import annotations

from sam4em.evaluation.consistency import (
    FlickerScores,
    compare_flicker,
    flicker,
    flicker_scores,
    slice_change,
)
from sam4em.evaluation.evaluate import evaluate_volumes, format_table
from sam4em.evaluation.evaluate_files import evaluate_files
from sam4em.evaluation.instance_metrics import (
    MSA_THRESHOLDS,
    Contingency,
    InstanceScores,
    adapted_rand_error,
    contingency_table,
    instance_scores,
    instance_scores_from_contingency,
    label_instances,
    match_instances,
    mean_segmentation_accuracy,
    segmentation_accuracy,
    variation_of_information,
)
from sam4em.evaluation.metrics import (
    SemanticCounts,
    SurfaceDistances,
    confusion_counts,
    dice,
    iou,
    slice_counts,
    slice_mean_scores,
    surface_distances,
    surface_distances_from_points,
)

__all__ = [
    "MSA_THRESHOLDS",
    "Contingency",
    "FlickerScores",
    "InstanceScores",
    "SemanticCounts",
    "SurfaceDistances",
    "adapted_rand_error",
    "compare_flicker",
    "confusion_counts",
    "contingency_table",
    "dice",
    "evaluate_files",
    "evaluate_volumes",
    "flicker",
    "flicker_scores",
    "format_table",
    "instance_scores",
    "instance_scores_from_contingency",
    "iou",
    "label_instances",
    "match_instances",
    "mean_segmentation_accuracy",
    "segmentation_accuracy",
    "slice_change",
    "slice_counts",
    "slice_mean_scores",
    "surface_distances",
    "surface_distances_from_points",
    "variation_of_information",
]
