"""Property-based tests of sam4em.evaluation on small random volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.metrics import variation_of_information as sk_variation_of_information

from sam4em.evaluation import (
    confusion_counts,
    contingency_table,
    evaluate_volumes,
    flicker_scores,
    instance_scores,
    surface_distances,
    variation_of_information,
)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))


@st.composite
def volume_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean (Z, Y, X) volumes of one small shape."""
    shape = draw(shapes)
    return draw(arrays(bool, shape)), draw(arrays(bool, shape))


voxel_sizes = st.tuples(*(st.floats(0.5, 50.0, allow_nan=False) for _ in range(3)))


@settings(max_examples=50, deadline=None)
@given(volume_pairs())
def test_dice_iou_range_relation_and_symmetry(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    counts, swapped = confusion_counts(pred, gt), confusion_counts(gt, pred)
    assert 0.0 <= counts.iou <= counts.dice <= 1.0
    assert counts.dice == pytest.approx(2 * counts.iou / (1 + counts.iou))
    assert (swapped.dice, swapped.iou) == pytest.approx((counts.dice, counts.iou))
    assert (swapped.precision, swapped.recall) == pytest.approx((counts.recall, counts.precision))


@settings(max_examples=50, deadline=None)
@given(volume_pairs(), voxel_sizes)
def test_surface_distances_symmetric_and_ordered(
    pair: tuple[np.ndarray, np.ndarray], voxel_size: tuple[float, ...]
) -> None:
    pred, gt = pair
    forward, backward = surface_distances(pred, gt, voxel_size), surface_distances(gt, pred, voxel_size)
    assert (forward.hd95, forward.assd, forward.hausdorff) == pytest.approx(
        (backward.hd95, backward.assd, backward.hausdorff)
    )
    if math.isfinite(forward.hausdorff):
        assert 0.0 <= forward.assd <= forward.hausdorff + 1e-9
        assert forward.hd95 <= forward.hausdorff + 1e-9


@settings(max_examples=50, deadline=None)
@given(shapes.flatmap(lambda s: arrays(bool, s)), voxel_sizes)
def test_perfect_prediction_scores_perfectly(volume: np.ndarray, voxel_size: tuple[float, ...]) -> None:
    counts = confusion_counts(volume, volume)
    assert (counts.dice, counts.iou, counts.precision, counts.recall) == (1.0, 1.0, 1.0, 1.0)
    distances = surface_distances(volume, volume, voxel_size)
    assert (distances.hd95, distances.assd, distances.hausdorff) == (0.0, 0.0, 0.0)
    scores = instance_scores(volume, volume)
    assert (scores.ap50, scores.ap75, scores.msa) == (1.0, 1.0, 1.0)
    assert (scores.voi_split, scores.voi_merge, scores.arand) == pytest.approx((0.0, 0.0, 0.0))
    assert flicker_scores(volume, volume).difference == 0.0


@settings(max_examples=50, deadline=None)
@given(volume_pairs(), st.sampled_from([None, 1, 2]))
def test_instance_scores_in_range(pair: tuple[np.ndarray, np.ndarray], connectivity: int | None) -> None:
    pred, gt = pair
    scores = instance_scores(pred, gt, connectivity=connectivity)
    assert 0.0 <= scores.msa <= 1.0
    assert 0.0 <= scores.ap75 <= scores.ap50 <= 1.0  # a stricter threshold never adds matches
    assert all(0.0 <= a <= 1.0 for a in scores.accuracies)
    assert 0.0 <= scores.arand <= 1.0
    assert scores.voi_split >= 0.0
    assert scores.voi_merge >= 0.0


@settings(max_examples=50, deadline=None)
@given(
    shapes.flatmap(
        lambda s: st.tuples(
            arrays(np.int64, s, elements=st.integers(0, 3)), arrays(np.int64, s, elements=st.integers(0, 3))
        )
    )
)
def test_voi_matches_skimage(labels: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = labels
    if not gt.any():
        return  # skimage divides by the number of true-foreground voxels
    ours = variation_of_information(contingency_table(pred, gt))
    np.testing.assert_allclose(ours, sk_variation_of_information(gt, pred, ignore_labels=[0]), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(volume_pairs(), st.integers(1, 3))
def test_chunked_equals_whole(pair: tuple[np.ndarray, np.ndarray], chunk_slices: int) -> None:
    pred, gt = (v.astype(np.uint8) for v in pair)
    whole = evaluate_volumes(pred, gt, classes={"c": 1}, voxel_size=(3.0, 1.0, 1.0)).classes["c"].values
    chunked = evaluate_volumes(
        pred, gt, classes={"c": 1}, voxel_size=(3.0, 1.0, 1.0), chunk_slices=chunk_slices
    ).as_dict()
    for key, value in whole.items():
        assert chunked["classes"]["c"][key] == pytest.approx(value), key
