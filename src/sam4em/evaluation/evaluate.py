"""Evaluate a predicted EM volume against its ground truth, class by class, reading chunks along z.

:func:`evaluate_volumes` runs every registered streaming metric
(:mod:`~sam4em.evaluation.metric_registry`: overlap, surface distances, instances, flicker, and any
added) while holding only ``chunk_slices`` slices (plus one halo slice on each side) in memory.
Everything is exact, not approximated per chunk (the
:class:`~sam4em.evaluation.streaming_metric.StreamingMetric` contract): confusion counts and
per-slice counts are summed, flicker carries the last slice of the previous chunk, connected
components are labelled per chunk and joined across chunk borders with the same connectivity, and
surface distances are computed from the collected surface voxel coordinates (a k-d tree; equal to
the distance-transform computation on the whole volume). Memory therefore grows with the number
of surface voxels and instances, not with the volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from sam4em.evaluation.input_checks import CodeTally, check_default_codes, check_probabilities
from sam4em.evaluation.metric_registry import METRICS, distance_keys, table_keys
from sam4em.evaluation.metrics import check_same_shape, normalize_voxel_size
from sam4em.evaluation.streaming_metric import (
    ChunkBounds,
    ClassChunk,
    MetricContext,
    ScoreValue,
    StreamingMetric,
    chunk_bounds,
)

__all__ = [
    "ClassScores",
    "Evaluation",
    "VolumeLike",
    "default_pred_classes",
    "evaluate_volumes",
    "format_table",
]


class VolumeLike(Protocol):
    """What :func:`evaluate_volumes` needs of an input: numpy, zarr, h5py, dask and tensorstore fit."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class ClassScores:
    """The scores of one class: each metric's typed result, and all of them as one flat dict."""

    #: metric name -> its typed result (e.g. ``"surface"`` -> :class:`~sam4em.evaluation.SurfaceDistances`).
    results: dict[str, Any]
    #: key -> number, in output order (dice, iou, ..., flicker_diff, then added metrics' keys).
    values: dict[str, ScoreValue]


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_volumes` computed; :meth:`as_dict` is its JSON form."""

    shape: tuple[int, ...]
    voxel_size: tuple[float, ...] | None
    distance_unit: str
    threshold: float
    connectivity: int
    chunk_slices: int
    classes: dict[str, ClassScores]

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "voxel_size": self.voxel_size,
            "distance_unit": self.distance_unit,
            "threshold": self.threshold,
            "connectivity": self.connectivity,
            "chunk_slices": self.chunk_slices,
            "classes": {name: dict(scores.values) for name, scores in self.classes.items()},
        }


def default_pred_classes(classes: Mapping[str, int], *, channels: bool) -> dict[str, int]:
    """The prediction's code of each class when none are given: the same from Python, the CLI and napari.

    A channel stack (C, Z, Y, X) holds the classes in the order of ``classes`` (channel 0, 1, ...);
    a label map holds the k-th class as ``k + 1`` (1..C), as ``sam4em segment --output-type labels``
    numbers them, whatever the ground truth's codes. This is the default because a prediction's codes
    are the predictor's choice, not the annotation's: most tools write 1..C (a binary mask is 0/1), and
    a map with other codes (a 0/255 mask) is refused with the fix (``pred_classes``) rather than
    scored as empty (:mod:`~sam4em.evaluation.input_checks`). So is a ground truth coded with the
    same numbers in another order (``{"a": 2, "b": 1}``), where a prediction in either numbering
    would pass unnoticed.
    """
    return {name: i if channels else i + 1 for i, name in enumerate(classes)}


@dataclass(frozen=True)
class _Inputs:
    """Checked inputs: (Z, Y, X) ground truth, prediction with or without channels, optional mask."""

    pred: VolumeLike
    gt: VolumeLike
    mask: VolumeLike | None
    classes: dict[str, int]
    pred_ids: dict[str, int]
    threshold: float
    shape: tuple[int, ...]

    @property
    def has_channels(self) -> bool:
        return len(self.pred.shape) == 4

    @property
    def pred_kind(self) -> str:
        return str(np.dtype(self.pred.dtype).kind)

    def foreground(self, pred_block: NDArray[Any], name: str) -> NDArray[np.bool_]:
        """Class ``name``'s foreground in a block of the prediction (see :func:`evaluate_volumes`)."""
        block = pred_block[self.pred_ids[name]] if self.has_channels else pred_block
        if self.pred_kind == "f":
            return np.asarray(block >= self.threshold)
        if self.has_channels or self.pred_kind == "b":
            return np.asarray(block != 0)
        return np.asarray(block == self.pred_ids[name])


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


def _check_inputs(
    pred: VolumeLike,
    gt: VolumeLike,
    mask: VolumeLike | None,
    classes: Mapping[str, int],
    pred_classes: Mapping[str, int] | None,
    threshold: float,
) -> _Inputs:
    """Shapes, classes and prediction kind, checked before anything is read."""
    if len(gt.shape) != 3:
        raise ValueError(f"ground truth must be (Z, Y, X), got shape {tuple(gt.shape)}")
    gt_shape = tuple(int(s) for s in gt.shape)
    if len(pred.shape) not in (3, 4):
        raise ValueError(f"prediction must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(pred.shape)}")
    check_same_shape(tuple(pred.shape)[-3:], gt_shape, (_named(pred, "prediction"), _named(gt, "ground truth")))
    if mask is not None:
        check_same_shape(tuple(mask.shape), gt_shape, (_named(mask, "mask"), _named(gt, "ground truth")))
    if not classes:
        raise ValueError("classes must name at least one class")
    has_channels = len(pred.shape) == 4
    pred_ids = dict(default_pred_classes(classes, channels=has_channels) if pred_classes is None else pred_classes)
    missing = sorted(set(classes) - set(pred_ids))
    if missing:
        raise ValueError(f"pred_classes lacks classes {missing}")
    if not has_channels and np.dtype(pred.dtype).kind in "fb" and len(classes) > 1:
        raise ValueError(
            "a (Z, Y, X) floating or boolean prediction holds one class; pass (C, Z, Y, X) or a label volume"
        )
    if pred_classes is None and not has_channels:
        check_default_codes(classes, pred_ids, _named(pred, "prediction"))
    return _Inputs(pred, gt, mask, dict(classes), pred_ids, threshold, gt_shape)


class _CodeChecks:
    """The input checks of :mod:`~sam4em.evaluation.input_checks`, fed the chunks evaluation reads."""

    def __init__(self, inputs: _Inputs) -> None:
        self.inputs = inputs
        self.pred_name = _named(inputs.pred, "prediction")
        self.gt_codes = CodeTally(inputs.classes, _named(inputs.gt, "ground truth"))
        label_map = not inputs.has_channels and inputs.pred_kind in "iu"
        self.pred_codes = CodeTally(inputs.pred_ids, self.pred_name) if label_map else None

    def add(self, gt_core: NDArray[Any], pred_block: NDArray[Any], core: slice) -> None:
        self.gt_codes.add(gt_core)
        if self.pred_codes is not None:
            self.pred_codes.add(pred_block[core])
        if self.inputs.pred_kind == "f":
            check_probabilities(pred_block, self.pred_name)

    def finish(self, chunk_slices: int, allow_absent_classes: bool) -> None:
        self.gt_codes.check_ground_truth(self.inputs.gt, chunk_slices, allow_absent_classes)
        if self.pred_codes is not None:
            self.pred_codes.check_prediction()


def _read_chunk(
    inputs: _Inputs, bounds: ChunkBounds
) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.bool_] | None]:
    """Ground truth, prediction and mask of one chunk with its halo slices (h0:h1)."""
    h0, h1 = bounds.h0, bounds.h1
    gt_block = np.asarray(inputs.gt[h0:h1])
    pred_block = np.asarray(inputs.pred[:, h0:h1] if inputs.has_channels else inputs.pred[h0:h1])
    mask_block = None if inputs.mask is None else np.asarray(inputs.mask[h0:h1]).astype(bool, copy=False)
    return gt_block, pred_block, mask_block


def _class_chunk(
    inputs: _Inputs,
    name: str,
    blocks: tuple[NDArray[Any], NDArray[Any], NDArray[np.bool_] | None],
    bounds: ChunkBounds,
) -> ClassChunk:
    """Class ``name``'s masked foreground in one chunk, as every metric sees it."""
    gt_block, pred_block, mask_block = blocks
    pred_fg, gt_fg = inputs.foreground(pred_block, name), gt_block == inputs.classes[name]
    if mask_block is not None:
        pred_fg, gt_fg = pred_fg & mask_block, gt_fg & mask_block
    return ClassChunk(pred_fg, gt_fg, mask_block, bounds.core, bounds.z0)


def _run_metrics(
    inputs: _Inputs,
    context: MetricContext,
    chunk_slices: int,
    progress: Callable[[int, int], None] | None,
    allow_absent_classes: bool,
) -> dict[str, ClassScores]:
    """Feed every chunk of every class to every registered metric; then check the codes seen."""
    metrics: dict[str, list[StreamingMetric[Any]]] = {
        name: [metric(context) for metric in METRICS.values()] for name in inputs.classes
    }
    checks = _CodeChecks(inputs)
    n_slices = inputs.shape[0]
    for bounds in chunk_bounds(n_slices, chunk_slices):
        blocks = _read_chunk(inputs, bounds)
        checks.add(blocks[0][bounds.core], blocks[1], bounds.core)
        for name, class_metrics in metrics.items():
            chunk = _class_chunk(inputs, name, blocks, bounds)
            for metric in class_metrics:
                metric.add(chunk)
        if progress is not None:
            progress(bounds.z1, n_slices)
    checks.finish(chunk_slices, allow_absent_classes)
    return {name: _class_scores(class_metrics) for name, class_metrics in metrics.items()}


def _class_scores(metrics: Sequence[StreamingMetric[Any]]) -> ClassScores:
    results = {metric.name: metric.result() for metric in metrics}
    values: dict[str, ScoreValue] = {}
    for metric in metrics:
        values.update(metric.values(results[metric.name]))
    return ClassScores(results, values)


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
) -> Evaluation:
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
        pred_classes: class name -> label value / channel in ``pred``; default
            (:func:`default_pred_classes`, also the CLI's): channels in the order of ``classes`` for
            (C, Z, Y, X), codes ``1..C`` in that order for a label map (refused when ``classes``
            holds those numbers in another order: pass ``pred_classes`` then).
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
        An :class:`Evaluation`: ``classes[name].results`` holds each metric's typed result,
        ``classes[name].values`` the flat scores; :meth:`Evaluation.as_dict` is its JSON form,
        ``{"shape": (Z, Y, X), "voxel_size": (z, y, x) or None, "distance_unit": "nm" or "voxel",
        "threshold", "connectivity", "chunk_slices", "classes": {name: values}}``. The values have
        the keys of every registered metric: dice,
        iou, dice_slice_mean, iou_slice_mean, precision, recall, tp, fp, fn, tn, hd95, assd,
        hausdorff, n_pred_instances, n_gt_instances, ap50, ap75, msa, voi_split, voi_merge, voi,
        arand, rand_precision, rand_recall, flicker_pred, flicker_gt, flicker_ratio, flicker_diff
        (definitions and empty-volume conventions in the metric modules).

    Raises:
        ValueError: on shape mismatches (naming both shapes), unknown classes or ambiguous inputs,
            and on inputs that would score silently wrong (see :mod:`~sam4em.evaluation.input_checks`):
            NaN or out-of-range probabilities, a class code absent from the ground truth, a label-map
            prediction with other codes than those expected, default label-map codes that the ground
            truth uses for other classes (pass ``pred_classes``).
    """
    if len(gt.shape) == 2:
        pred, gt, mask, voxel_size = _promote_2d(pred, gt, mask, voxel_size)
    inputs = _check_inputs(pred, gt, mask, classes, pred_classes, threshold)
    if chunk_slices is not None and chunk_slices < 1:
        raise ValueError(f"chunk_slices must be at least 1, got {chunk_slices}")
    spacing = normalize_voxel_size(voxel_size, 3)
    step = chunk_slices or max(inputs.shape[0], 1)
    scores = _run_metrics(inputs, MetricContext(connectivity, spacing), step, progress, allow_absent_classes)
    return Evaluation(
        shape=inputs.shape,
        voxel_size=None if voxel_size is None else spacing,
        distance_unit="voxel" if voxel_size is None else "nm",
        threshold=threshold,
        connectivity=3 if connectivity is None else connectivity,
        chunk_slices=step,
        classes=scores,
    )


def _named(volume: Any, role: str) -> str:
    """``"prediction pred.zarr"`` for a volume opened from a file (errors must name it), else the role."""
    path = getattr(volume, "path", None)
    return role if path is None else f"{role} {path}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.4f}")
    return str(value)


def format_table(results: Evaluation, columns: Sequence[str] | None = None) -> str:
    """A plain-text table, one row per class, of the ``columns`` of :func:`evaluate_volumes`' result.

    ``columns`` defaults to the registered metrics' ``table_keys`` (:func:`table_keys`); a
    metric's ``distance_keys`` are headed with the distance unit, e.g. ``hd95 [nm]``.
    """
    columns = table_keys() if columns is None else columns
    unit, distances = results.distance_unit, distance_keys()
    headers = ["class"] + [f"{c} [{unit}]" if c in distances else c for c in columns]
    rows = [
        [name] + [_format_value(scores.values[c]) for c in columns] for name, scores in results.classes.items()
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
