"""`evaluate_files`: score a prediction file against a ground-truth file (what `sam4em evaluate` runs).

It opens the files (a `sam4em segment` output of any type, or any volume; see
:mod:`~sam4em.evaluation.prediction_input`), checks the scores file before the work starts, runs
:func:`~sam4em.evaluation.evaluate_volumes` and writes the scores atomically.
Ground truth and mask are opened so that a Zarr store with missing chunks is refused (a lost chunk
would count as background) unless ``allow_missing_chunks``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from sam4em.data.class_mapping import ClassMapping
from sam4em.evaluation.evaluate import Evaluation, evaluate_volumes
from sam4em.evaluation.prediction_input import open_prediction
from sam4em.evaluation.results_file import check_results_path, write_json
from sam4em.io import open_volume, parse_path_key

__all__ = ["evaluate_files"]

PathLike = str | os.PathLike[str]


def _codes(classes: str | Mapping[str, int]) -> dict[str, int]:
    return ClassMapping.parse(classes).single_codes() if isinstance(classes, str) else dict(classes)


def _split(spec: PathLike, key: str | None) -> tuple[str, str | None]:
    path, parsed = parse_path_key(os.fspath(spec))
    return path, key or parsed


def evaluate_files(
    pred: PathLike,
    gt: PathLike,
    *,
    classes: str | Mapping[str, int],
    pred_key: str | None = None,
    gt_key: str | None = None,
    pred_classes: str | Mapping[str, int] | None = None,
    mask: PathLike | None = None,
    json_path: PathLike | None = None,
    overwrite: bool = False,
    allow_missing_chunks: bool = False,
    **options: Any,
) -> Evaluation:
    """Evaluate the prediction file ``pred`` against the label file ``gt``; returns the scores.

    Args:
        pred, gt, mask: volume paths, ``path:key`` for containers (or the ``*_key`` arguments).
        classes: ground-truth codes, ``"mito=255,synapse=223"`` or ``{"mito": 255}``.
        pred_classes: codes of a label-map prediction sam4em did not write; default ``1..C`` in the
            order of ``classes`` (as ``sam4em segment --output-type labels`` numbers them; the one
            default of :func:`~sam4em.evaluation.evaluate.default_pred_classes`, as in
            :func:`evaluate_volumes`). sam4em outputs record their classes, so it is refused for them.
        json_path: also write the scores there (checked before evaluating; never an input;
            an existing file only with ``overwrite``).
        allow_missing_chunks: read a ground truth or mask whose Zarr chunks are partly missing.
        options: ``threshold``, ``voxel_size`` (default: the ground truth's), ``chunk_slices``,
            ``progress``, ``connectivity``, ``allow_absent_classes`` of :func:`evaluate_volumes`.
    """
    codes = _codes(classes)
    pred_path, pred_key = _split(pred, pred_key)
    gt_path, gt_key = _split(gt, gt_key)
    mask_path, mask_key = _split(mask, None) if mask is not None else (None, None)
    if json_path is not None:
        inputs = [p for p in (pred_path, gt_path, mask_path) if p is not None]
        check_results_path(json_path, inputs=inputs, overwrite=overwrite)
    with ExitStack() as stack:
        truth = stack.enter_context(open_volume(gt_path, gt_key, allow_missing_chunks=allow_missing_chunks))
        prediction = open_prediction(pred_path, pred_key, list(codes), stack)
        ids = prediction.pred_classes
        if pred_classes is not None:
            if prediction.record is not None:
                raise ValueError(
                    f"{pred_path}: is a `sam4em segment` output that records its classes; drop pred_classes / "
                    "--pred-classes"
                )
            ids = _codes(pred_classes)
        evaluation_mask = None
        if mask_path is not None:
            evaluation_mask = stack.enter_context(
                open_volume(mask_path, mask_key, allow_missing_chunks=allow_missing_chunks)
            )
        voxel_size = options.pop("voxel_size", None) or truth.voxel_size
        results = evaluate_volumes(
            prediction.array, truth, classes=codes, pred_classes=ids, mask=evaluation_mask,
            voxel_size=voxel_size, **options,
        )
    if json_path is not None:
        write_json(json_path, results.as_dict(), overwrite=overwrite)
    return results

