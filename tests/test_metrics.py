"""Tests of sam4em.evaluation: hand-computed cases, cross-checks against scipy / scikit-image, edge cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff, jaccard
from skimage.measure import label as sk_label
from skimage.metrics import adapted_rand_error as sk_adapted_rand_error
from skimage.metrics import variation_of_information as sk_variation_of_information

from sam4em.evaluation import (
    SemanticCounts,
    adapted_rand_error,
    confusion_counts,
    contingency_table,
    dice,
    evaluate_volumes,
    flicker,
    flicker_scores,
    format_table,
    instance_scores,
    iou,
    label_instances,
    match_instances,
    mean_segmentation_accuracy,
    segmentation_accuracy,
    slice_change,
    slice_counts,
    slice_mean_scores,
    surface_distances,
    surface_distances_from_points,
    variation_of_information,
)
from sam4em.evaluation.metrics import surface_voxels


def line(values: list[int]) -> np.ndarray:
    """A (1, 1, X) volume from a list: objects laid out along x, easy to count by hand."""
    return np.asarray(values, dtype=np.int64)[None, None, :]


def blobs(shape: tuple[int, ...], seed: int, fraction: float = 0.35, sigma: float = 1.5) -> np.ndarray:
    """Smooth random binary blobs, a stand-in for organelle masks."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return noise > np.quantile(noise, 1 - fraction)


# ---------------------------------------------------------------- semantic


def test_dice_iou_precision_recall_by_hand() -> None:
    # pred 1110, gt 0111: tp=2, fp=1, fn=1 -> Dice 4/6, IoU 2/4, precision 2/3, recall 2/3.
    counts = confusion_counts(line([1, 1, 1, 0]), line([0, 1, 1, 1]))
    assert counts == SemanticCounts(tp=2, fp=1, fn=1, tn=0)
    assert counts.dice == pytest.approx(2 / 3)
    assert counts.iou == pytest.approx(1 / 2)
    assert counts.precision == pytest.approx(2 / 3)
    assert counts.recall == pytest.approx(2 / 3)


def test_iou_matches_scipy_jaccard() -> None:
    pred, gt = blobs((6, 20, 20), 1), blobs((6, 20, 20), 2)
    assert iou(pred, gt) == pytest.approx(1 - jaccard(pred.ravel(), gt.ravel()))


def test_empty_conventions() -> None:
    empty = np.zeros((3, 4, 4), dtype=bool)
    full = np.ones((3, 4, 4), dtype=bool)
    both_empty = confusion_counts(empty, empty)
    assert (both_empty.dice, both_empty.iou, both_empty.precision, both_empty.recall) == (1, 1, 1, 1)
    missed = confusion_counts(empty, full)  # nothing predicted, truth everywhere
    assert (missed.dice, missed.iou, missed.precision, missed.recall) == (0, 0, 0, 0)
    hallucinated = confusion_counts(full, empty)
    assert (hallucinated.dice, hallucinated.precision, hallucinated.recall) == (0, 0, 0)


def test_slice_mean_by_hand() -> None:
    # slice 0: both empty -> Dice 1, IoU 1; slice 1: pred 11, gt 10 -> Dice 2/3, IoU 1/2.
    pred = np.array([[[0, 0]], [[1, 1]]])
    gt = np.array([[[0, 0]], [[1, 0]]])
    dice_mean, iou_mean = slice_mean_scores(slice_counts(pred, gt))
    assert dice_mean == pytest.approx((1 + 2 / 3) / 2)
    assert iou_mean == pytest.approx((1 + 1 / 2) / 2)
    assert dice(pred, gt) == pytest.approx(2 / 3)  # the volume score ignores the empty slice


def test_counts_accumulate_over_chunks() -> None:
    pred, gt = blobs((10, 16, 16), 3), blobs((10, 16, 16), 4)
    chunked = sum(
        (confusion_counts(pred[z : z + 3], gt[z : z + 3]) for z in range(0, 10, 3)), SemanticCounts()
    )
    assert chunked == confusion_counts(pred, gt)
    per_slice = np.concatenate([slice_counts(pred[z : z + 3], gt[z : z + 3]) for z in range(0, 10, 3)])
    np.testing.assert_array_equal(per_slice, slice_counts(pred, gt))


def test_mask_excludes_voxels() -> None:
    # Masked-out voxel 2 disagrees; inside the mask pred 1 0 | gt 1 0 agree exactly.
    pred, gt, mask = line([1, 0, 1]), line([1, 0, 0]), line([1, 1, 0])
    counts = confusion_counts(pred, gt, mask)
    assert counts == SemanticCounts(tp=1, fp=0, fn=0, tn=1)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        dice(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        instance_scores(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        evaluate_volumes(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), classes={"m": 1})


def test_2d_input_is_one_slice() -> None:
    pred2d, gt2d = blobs((20, 20), 5), blobs((20, 20), 6)
    assert dice(pred2d, gt2d) == pytest.approx(dice(pred2d[None], gt2d[None]))
    np.testing.assert_array_equal(slice_counts(pred2d, gt2d), slice_counts(pred2d[None], gt2d[None]))


# ---------------------------------------------------------------- surface distances


def test_surface_voxels_of_a_cube() -> None:
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface_voxels(cube).sum() == 26  # all but the centre
    assert surface_voxels(np.ones((3, 3, 3), dtype=bool)).sum() == 26  # outside the array is background


def test_surface_distance_scales_with_anisotropic_voxel_size() -> None:
    gt = np.zeros((5, 3, 3), dtype=bool)
    gt[1, 1, 1] = True
    along_z, along_y = np.zeros_like(gt), np.zeros_like(gt)
    along_z[3, 1, 1] = True  # two sections away
    along_y[1, 2, 1] = True  # one pixel away in-plane
    voxel_size = (40.0, 4.0, 4.0)
    assert surface_distances(along_z, gt, voxel_size).hd95 == pytest.approx(80.0)
    assert surface_distances(along_z, gt, voxel_size).assd == pytest.approx(80.0)
    assert surface_distances(along_y, gt, voxel_size).hausdorff == pytest.approx(4.0)
    assert surface_distances(along_z, gt).hd95 == pytest.approx(2.0)  # no voxel size: voxels


def test_hd95_and_assd_by_hand() -> None:
    # gt: voxel x=0; pred: run x=0..9 (every voxel is surface in a 1x1 cross-section).
    # pred->gt distances 0..9, gt->pred 0; pooled sorted [0,0,1,...,9] (11 values):
    # 95th percentile at rank 9.5 -> 8.5. ASSD = (mean 4.5 + 0) / 2 = 2.25. Hausdorff 9.
    gt = line([1] + [0] * 11)
    pred = line([1] * 10 + [0] * 2)
    result = surface_distances(pred, gt)
    assert result.hd95 == pytest.approx(8.5)
    assert result.assd == pytest.approx(2.25)
    assert result.hausdorff == pytest.approx(9.0)


def test_surface_distance_empty_sides() -> None:
    empty, one = np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert surface_distances(empty, empty).hd95 == 0.0
    assert surface_distances(one, empty).hd95 == np.inf
    assert surface_distances(empty, one).assd == np.inf
    assert surface_distances(one, one).hausdorff == 0.0  # one-voxel object


def test_hausdorff_matches_scipy_directed_hausdorff() -> None:
    pred, gt = blobs((8, 18, 18), 7), blobs((8, 18, 18), 8)
    voxel_size = np.array([30.0, 5.0, 6.0])
    points_pred = np.argwhere(surface_voxels(pred)) * voxel_size
    points_gt = np.argwhere(surface_voxels(gt)) * voxel_size
    expected = max(
        directed_hausdorff(points_pred, points_gt)[0], directed_hausdorff(points_gt, points_pred)[0]
    )
    assert surface_distances(pred, gt, voxel_size).hausdorff == pytest.approx(expected)
    from_points = surface_distances_from_points(points_pred, points_gt)
    from_edt = surface_distances(pred, gt, voxel_size)
    assert from_points.hd95 == pytest.approx(from_edt.hd95)
    assert from_points.assd == pytest.approx(from_edt.assd)


# ---------------------------------------------------------------- instances


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_components_match_skimage(connectivity: int) -> None:
    binary = np.random.default_rng(9).random((6, 12, 12)) > 0.6
    labels, n = label_instances(binary, connectivity)
    expected = sk_label(binary, connectivity=connectivity)
    assert n == expected.max()
    # Same partition: every (ours, skimage) label pair occurs once per object.
    pairs = np.unique(np.stack([labels[binary], expected[binary]]), axis=1)
    assert pairs.shape[1] == n


def test_default_connectivity_is_full() -> None:
    diagonal = np.zeros((2, 2, 2), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True
    assert label_instances(diagonal)[1] == 1
    assert label_instances(diagonal, connectivity=1)[1] == 2


def test_segmentation_accuracy_and_msa_by_hand() -> None:
    # x:    0 1 2 3 4 5 6 7 8 9 10
    # gt:   A A A A . . B B . . .
    # pred: P P P P . Q Q Q . . R
    # IoU(P,A)=1, IoU(Q,B)=2/3, R unmatched.
    # t=0.5: TP=2, FP=1, FN=0 -> 2/3;  t=0.75: TP=1, FP=2, FN=1 -> 1/4.
    # mSA: thresholds .50-.65 (4 of them) give 2/3, .70-.95 (6) give 1/4 -> (8/3 + 6/4) / 10 = 5/12.
    gt = line([1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    pred = line([1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1])
    scores = instance_scores(pred, gt)
    assert (scores.n_pred, scores.n_gt) == (3, 2)
    assert scores.ap50 == pytest.approx(2 / 3)
    assert scores.ap75 == pytest.approx(1 / 4)
    assert scores.msa == pytest.approx(5 / 12)


def test_matching_is_optimal_not_greedy() -> None:
    # x:    0 1 2 3 4 5 6
    # gt:   2 2 1 1 1 1 0
    # pred: 1 1 1 1 1 2 2
    # IoU(p1,g1)=3/6=.5, IoU(p1,g2)=2/5=.4, IoU(p2,g1)=1/5=.2. At t=0.2 a greedy matcher takes p1-g1
    # and stops at 1 match; the optimal one takes p1-g2 and p2-g1: TP=2, FP=FN=0 -> accuracy 1.
    cont = contingency_table(line([1, 1, 1, 1, 1, 2, 2]), line([2, 2, 1, 1, 1, 1, 0]))
    pred_idx, gt_idx, ious = match_instances(cont, 0.2)
    assert sorted(zip(pred_idx.tolist(), gt_idx.tolist(), strict=True)) == [(1, 2), (2, 1)]
    assert sorted(ious.tolist()) == pytest.approx([0.2, 0.4])
    assert segmentation_accuracy(cont, 0.2) == 1.0
    assert segmentation_accuracy(cont, 0.5) == pytest.approx(1 / 3)  # only p1-g1: TP=1, FP=1, FN=1


def test_iou_tie_at_threshold_counts_once() -> None:
    # One prediction covering two 2-voxel truths: IoU 0.5 with each, but only one match.
    cont = contingency_table(line([1, 1, 1, 1]), line([1, 1, 2, 2]))
    assert segmentation_accuracy(cont, 0.5) == pytest.approx(1 / 2)  # TP=1, FP=0, FN=1


def test_voi_and_arand_split_by_hand() -> None:
    # One true object of 4 voxels split in two halves.
    # split = H(pred|gt) = 1 bit, merge = H(gt|pred) = 0.
    # Pairs (ordered, distinct): together in both = 2*2 + 2*2 - 4 = 4; in pred 4; in gt 16 - 4 = 12.
    # Rand precision 4/4 = 1, recall 4/12 = 1/3, ARE = 1 - 2*4/(4+12) = 1/2.
    cont = contingency_table(line([1, 1, 2, 2]), line([1, 1, 1, 1]))
    assert variation_of_information(cont) == pytest.approx((1.0, 0.0))
    error, precision, recall = adapted_rand_error(cont)
    assert (error, precision, recall) == pytest.approx((0.5, 1.0, 1 / 3))
    # The mirror image is a merge: one predicted object over two true halves.
    merged = contingency_table(line([1, 1, 1, 1]), line([1, 1, 2, 2]))
    assert variation_of_information(merged) == pytest.approx((0.0, 1.0))
    assert adapted_rand_error(merged) == pytest.approx((0.5, 1 / 3, 1.0))


def test_voi_ignores_gt_background() -> None:
    # Predicted voxel over true background (x=2) is ignored: otherwise a perfect match.
    cont = contingency_table(line([1, 1, 1, 0]), line([1, 1, 0, 0]))
    assert variation_of_information(cont) == pytest.approx((0.0, 0.0))
    assert adapted_rand_error(cont)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voi_and_arand_match_skimage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 5, size=(4, 10, 10))
    pred = rng.integers(0, 4, size=(4, 10, 10)) * 3  # non-consecutive labels, background included
    cont = contingency_table(pred, gt)
    np.testing.assert_allclose(
        variation_of_information(cont), sk_variation_of_information(gt, pred, ignore_labels=[0])
    )
    assert adapted_rand_error(cont)[0] == pytest.approx(sk_adapted_rand_error(gt, pred)[0])


def test_instance_empty_and_one_voxel() -> None:
    empty = np.zeros((3, 4, 4), bool)
    dot = empty.copy()
    dot[1, 2, 2] = True
    both_empty = instance_scores(empty, empty)
    assert (both_empty.ap50, both_empty.msa, both_empty.voi, both_empty.arand) == (1.0, 1.0, 0.0, 0.0)
    missed = instance_scores(empty, dot)
    assert (missed.ap50, missed.msa) == (0.0, 0.0)
    assert missed.arand == 0.0  # a one-voxel truth has no voxel pairs to get wrong: ARE vacuously 0
    hallucinated = instance_scores(dot, empty)
    assert (hallucinated.ap50, hallucinated.arand) == (0.0, 1.0)
    single = instance_scores(dot, dot)
    assert (single.ap75, single.msa, single.voi, single.arand) == (1.0, 1.0, 0.0, 0.0)


def test_many_instances_use_sparse_matching() -> None:
    # 2000 one-voxel objects on a lattice; a dense all-pairs loop would be far too slow here.
    gt = np.zeros((10, 40, 40), bool)
    gt[::2, ::2, ::2] = True
    pred = gt.copy()
    pred[0] = False  # drop one section's 400 objects
    labels, n = label_instances(gt)
    assert n == 2000
    mean, accuracies = mean_segmentation_accuracy(contingency_table(label_instances(pred)[0], labels))
    assert mean == pytest.approx(1600 / 2000)
    assert all(a == pytest.approx(0.8) for a in accuracies)


# ---------------------------------------------------------------- consistency


def test_flicker_by_hand() -> None:
    # z0 1100, z1 1110: IoU 2/3 -> change 1/3; z1 -> z2 0000: change 1; z2 -> z3 both empty: 0.
    volume = np.array([[[1, 1, 0, 0]], [[1, 1, 1, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 0]]])
    np.testing.assert_allclose(slice_change(volume), [1 / 3, 1.0, 0.0])
    assert flicker(volume) == pytest.approx((1 / 3 + 1) / 3)
    assert flicker(volume[:1]) == 0.0


def test_flicker_scores_compare_to_truth() -> None:
    gt = blobs((8, 16, 16), 10)
    perfect = flicker_scores(gt, gt)
    assert (perfect.ratio, perfect.difference) == (1.0, 0.0)
    static = np.repeat(gt[:1], 8, axis=0)  # truth identical in every section
    jumpy = flicker_scores(gt, static)
    assert jumpy.gt == 0.0
    assert jumpy.ratio == np.inf
    assert jumpy.difference == pytest.approx(flicker(gt))


# ---------------------------------------------------------------- evaluate_volumes


class LazyVolume:
    """A minimal lazy array: only z-slab reads, recording how many slices each read returns."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.read_sizes: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        block = self._data[key]
        z_axis = 1 if isinstance(key, tuple) else 0
        self.read_sizes.append(block.shape[z_axis])
        return block


def _two_class_volumes() -> tuple[np.ndarray, np.ndarray]:
    shape = (11, 24, 24)
    gt = blobs(shape, 11).astype(np.uint8) + 2 * (blobs(shape, 12, 0.2) & ~blobs(shape, 11))
    pred = blobs(shape, 13).astype(np.uint8) + 2 * (blobs(shape, 12, 0.25) & ~blobs(shape, 13))
    return pred, gt


@pytest.mark.parametrize("chunk_slices", [1, 3, 4])
def test_chunked_evaluation_equals_whole_volume(chunk_slices: int) -> None:
    pred, gt = _two_class_volumes()
    classes = {"mito": 1, "synapse": 2}
    voxel_size = (40.0, 8.0, 8.0)
    lazy_pred, lazy_gt = LazyVolume(pred), LazyVolume(gt)
    chunked = evaluate_volumes(
        lazy_pred, lazy_gt, classes=classes, voxel_size=voxel_size, chunk_slices=chunk_slices
    ).as_dict()
    assert max(lazy_gt.read_sizes) <= chunk_slices + 2  # the chunk plus one halo slice per side
    for name, value in classes.items():
        p, g = pred == value, gt == value
        result = chunked["classes"][name]
        counts = confusion_counts(p, g)
        assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (
            counts.tp,
            counts.fp,
            counts.fn,
            counts.tn,
        )
        assert result["dice_slice_mean"] == pytest.approx(slice_mean_scores(slice_counts(p, g))[0])
        distances = surface_distances(p, g, voxel_size)
        assert result["hd95"] == pytest.approx(distances.hd95)
        assert result["assd"] == pytest.approx(distances.assd)
        instances = instance_scores(p, g)
        assert instances.n_gt > 1  # objects do cross chunk borders here
        assert (result["n_pred_instances"], result["n_gt_instances"]) == (instances.n_pred, instances.n_gt)
        assert result["msa"] == pytest.approx(instances.msa)
        assert result["voi_split"] == pytest.approx(instances.voi_split)
        assert result["voi_merge"] == pytest.approx(instances.voi_merge)
        assert result["arand"] == pytest.approx(instances.arand)
        flick = flicker_scores(p, g)
        assert result["flicker_pred"] == pytest.approx(flick.pred)
        assert result["flicker_gt"] == pytest.approx(flick.gt)


def test_chunk_borders_join_components_with_chosen_connectivity() -> None:
    # A diagonal staircase through z: one object with full connectivity, one per slice with faces only.
    volume = np.zeros((6, 8, 8), np.uint8)
    for z in range(6):
        volume[z, z, z] = 1
    for connectivity, expected in ((3, 1), (1, 6)):
        result = evaluate_volumes(volume, volume, classes={"m": 1}, chunk_slices=1, connectivity=connectivity).as_dict()
        assert result["classes"]["m"]["n_gt_instances"] == expected
        assert result["classes"]["m"]["msa"] == 1.0


def test_evaluate_probability_channels_and_progress() -> None:
    _, gt = _two_class_volumes()
    # Channels in class order, as sam4em writes them: channel 0 is mito, channel 1 synapse.
    probabilities = np.stack([gt == 1, gt == 2]).astype(np.float32) * 0.8 + 0.1
    calls: list[tuple[int, int]] = []
    result = evaluate_volumes(
        probabilities,
        gt,
        classes={"mito": 1, "synapse": 2},
        chunk_slices=5,
        progress=lambda d, n: calls.append((d, n)),
    ).as_dict()
    assert calls == [(5, 11), (10, 11), (11, 11)]
    for metrics in result["classes"].values():
        assert (metrics["dice"], metrics["msa"], metrics["hd95"], metrics["voi"]) == (1.0, 1.0, 0.0, 0.0)
        assert metrics["flicker_ratio"] == 1.0
    assert result["distance_unit"] == "voxel"


def test_evaluate_single_class_probability_map_threshold() -> None:
    gt = np.zeros((2, 3, 3), np.uint8)
    gt[:, 1, 1] = 1
    prob = np.where(gt == 1, 0.6, 0.4)
    assert evaluate_volumes(prob, gt, classes={"m": 1}, threshold=0.5).classes["m"].values["dice"] == 1.0
    # Threshold 0.7 predicts nothing: Dice 0, surface distance inf.
    missed = evaluate_volumes(prob, gt, classes={"m": 1}, threshold=0.7).classes["m"].values
    assert (missed["dice"], missed["hd95"]) == (0.0, np.inf)
    with pytest.raises(ValueError, match="one class"):
        evaluate_volumes(prob, gt, classes={"a": 1, "b": 2})


def test_evaluate_mask_and_pred_classes() -> None:
    gt = np.zeros((3, 6, 6), np.uint8)
    gt[:, 1:3, 1:3] = 1
    pred = np.where(gt == 1, 7, 0).astype(np.uint8)
    pred[:, 5, 5] = 7  # wrong, but outside the mask
    mask = np.ones_like(gt, dtype=bool)
    mask[:, 5, :] = False
    result = evaluate_volumes(pred, gt, classes={"m": 1}, pred_classes={"m": 7}, mask=mask).classes["m"].values
    assert (result["dice"], result["fp"], result["hd95"], result["n_pred_instances"]) == (1.0, 0, 0.0, 1)
    assert result["tn"] == mask.sum() - gt.sum()


def test_evaluate_empty_volumes_and_2d() -> None:
    empty = np.zeros((4, 5, 5), np.uint8)
    result = evaluate_volumes(empty, empty, classes={"m": 1}, voxel_size=(30, 4, 4), chunk_slices=2).as_dict()[
        "classes"
    ]["m"]
    assert (result["dice"], result["dice_slice_mean"], result["hd95"], result["msa"], result["arand"]) == (
        1,
        1,
        0,
        1,
        0,
    )
    pred2d, gt2d = blobs((20, 20), 14).astype(np.uint8), blobs((20, 20), 15).astype(np.uint8)
    flat = evaluate_volumes(pred2d, gt2d, classes={"m": 1}, voxel_size=(5.0, 5.0)).as_dict()
    assert flat["shape"] == (1, 20, 20)
    assert flat["classes"]["m"]["hausdorff"] == pytest.approx(
        surface_distances(pred2d, gt2d, (5.0, 5.0)).hausdorff
    )


def test_format_table_lists_classes_and_infinities() -> None:
    gt = np.zeros((2, 4, 4), np.uint8)
    gt[0, 1, 1] = 1
    result = evaluate_volumes(np.zeros_like(gt), gt, classes={"mitochondria": 1}, voxel_size=(40, 8, 8))
    table = format_table(result)
    assert "mitochondria" in table
    assert "hd95 [nm]" in table
    assert "inf" in table
