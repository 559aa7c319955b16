"""Metrics for EM segmentation: semantic, surface, instance and slice-to-slice consistency.

All metric functions are pure and take (Z, Y, X) arrays (axis order z, y, x; voxel sizes in nm in
the same order). :func:`evaluate_volumes` runs every registered :class:`StreamingMetric` per class
over in-memory or lazy volumes, chunk by chunk along z, and :func:`format_table` renders its result;
:func:`register_metric` adds a metric.
"""

from __future__ import annotations

from sam4em.evaluation.consistency import (
    FlickerScores,
    compare_flicker,
    flicker,
    flicker_scores,
    slice_change,
)
from sam4em.evaluation.evaluate import (
    ClassScores,
    Evaluation,
    default_pred_classes,
    evaluate_volumes,
    format_table,
)
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
from sam4em.evaluation.metric_families import OverlapScores
from sam4em.evaluation.metric_registry import METRICS, register_metric, unregister_metric
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
from sam4em.evaluation.streaming_metric import ClassChunk, MetricContext, StreamingMetric

__all__ = [
    "METRICS",
    "MSA_THRESHOLDS",
    "ClassChunk",
    "ClassScores",
    "Contingency",
    "Evaluation",
    "FlickerScores",
    "InstanceScores",
    "MetricContext",
    "OverlapScores",
    "SemanticCounts",
    "StreamingMetric",
    "SurfaceDistances",
    "adapted_rand_error",
    "compare_flicker",
    "confusion_counts",
    "contingency_table",
    "default_pred_classes",
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
    "register_metric",
    "segmentation_accuracy",
    "slice_change",
    "slice_counts",
    "slice_mean_scores",
    "surface_distances",
    "surface_distances_from_points",
    "unregister_metric",
    "variation_of_information",
]
