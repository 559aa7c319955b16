"""Instance segmentation metrics for EM volumes, computed from a sparse contingency table.

Inputs are instance label arrays of shape (Z, Y, X) (2D (Y, X) also works) with 0 as background,
or binary masks that :func:`label_instances` splits into connected components. All metrics are
derived from one sparse contingency table (:class:`Contingency`), which is built with
``scipy.sparse`` and never as a dense all-pairs loop, and which can be merged across z-chunks.

Conventions
-----------
* Connected components: ``connectivity`` follows ``scipy.ndimage.generate_binary_structure`` /
  ``skimage.measure.label``: neighbours up to that many axes away. The default ``None`` is full
  connectivity (26-connectivity in 3D, 8-connectivity in 2D).
* Matching: a predicted and a true instance may be matched when their IoU is >= the threshold.
  The matching maximises the number of matches, ties broken by total IoU, with Hungarian matching
  (``scipy.optimize.linear_sum_assignment``), as StarDist's ``matching`` and elf / micro-sam's
  ``mean_segmentation_accuracy`` do. Only candidate pairs enter the assignment, solved per
  connected group of candidates, which gives the same number of matches as one dense assignment.
* Segmentation accuracy at a threshold (what StarDist / micro-sam report as "average precision"
  for instance segmentation, and what ``ap50`` / ``ap75`` are): TP / (TP + FP + FN), with
  TP = matches, FP = unmatched predictions, FN = unmatched truths.
* mSA (micro-sam's ``mean_segmentation_accuracy``, via elf): the mean of the segmentation accuracy
  over the IoU thresholds 0.50, 0.55, ..., 0.95. We use the exact decimal thresholds, whereas elf
  uses ``np.arange(0.5, 1.0, 0.05)`` whose values carry rounding noise; results differ only for an
  IoU exactly on a threshold. Deviation from elf: when prediction and truth both have no instance
  the accuracy is 1 (perfect, as for the semantic metrics), where elf returns 0.
* Variation of information (Meila 2007), in bits, split into split = H(pred | gt) (over-
  segmentation) and merge = H(gt | pred) (under-segmentation). Connectomics convention (CREMI,
  ``skimage.metrics.variation_of_information(gt, pred, ignore_labels=[0])``): voxels where the
  truth is background are left out; prediction background (label 0) is an ordinary segment, so
  missed voxels of several true objects count as merged into it. With no true foreground both
  parts are 0.
* Adapted Rand error (Arganda-Carreras et al. 2015, SNEMI3D / CREMI), as
  ``skimage.metrics.adapted_rand_error(gt, pred)`` computes it: voxels where the truth is
  background are left out, prediction background is an ordinary segment, and pairs are counted
  without a voxel paired with itself. ARE = 1 - F-score of Rand precision (pairs together in the
  prediction that are together in the truth) and Rand recall (pairs together in the truth that are
  together in the prediction). Note that skimage 0.26 returns these two the other way round (its
  "precision" divides by the truth's pairs). A ratio with no pairs to count is 1; with no true
  foreground the error is 0 if the prediction is empty too, else 1. The CREMI reference script
  instead treats prediction label 0 as single-voxel segments; that variant is not computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from sam4em.evaluation.metrics import check_same_shape

__all__ = [
    "MSA_THRESHOLDS",
    "Contingency",
    "InstanceScores",
    "adapted_rand_error",
    "connectivity_structure",
    "contingency_from_pairs",
    "contingency_table",
    "instance_scores",
    "instance_scores_from_contingency",
    "label_instances",
    "match_instances",
    "mean_segmentation_accuracy",
    "segmentation_accuracy",
    "variation_of_information",
]

MSA_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def connectivity_structure(ndim: int, connectivity: int | None = None) -> NDArray[np.bool_]:
    """Neighbourhood of ``ndim`` dimensions; ``connectivity`` in 1..ndim, None = ndim (full)."""
    connectivity = ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def label_instances(binary: ArrayLike, connectivity: int | None = None) -> tuple[NDArray[np.int64], int]:
    """Connected components of a boolean/0-1 array of shape (Z, Y, X) or (Y, X).

    Returns the int64 label array (0 = background, objects 1..n) and n. ``connectivity=None`` is full
    connectivity (26 in 3D, 8 in 2D); 1 is face connectivity (6 in 3D, 4 in 2D).
    """
    b = np.asarray(binary).astype(bool, copy=False)
    labels = np.empty(b.shape, dtype=np.int64)
    n = ndimage.label(b, structure=connectivity_structure(b.ndim, connectivity), output=labels)
    return labels, int(n)


@dataclass(frozen=True)
class Contingency:
    """Voxel overlap counts between predicted and true instances.

    ``table`` is a sparse CSR array of shape (n_pred + 1, n_gt + 1): entry (i, j) counts the voxels
    labelled i in the prediction and j in the truth, with index 0 the background on both sides and
    instances numbered 1..n (by :func:`contingency_table` in increasing order of their labels).
    """

    table: sparse.csr_array

    @property
    def n_pred(self) -> int:
        return self.table.shape[0] - 1

    @property
    def n_gt(self) -> int:
        return self.table.shape[1] - 1

    def sizes(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Voxel counts of predicted instances (n_pred,) and true instances (n_gt,)."""
        return (
            np.asarray(self.table.sum(axis=1)).ravel()[1:],
            np.asarray(self.table.sum(axis=0)).ravel()[1:],
        )

    def foreground_ious(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """(pred index, gt index, IoU) of every overlapping pair of instances; indices are 1-based."""
        pred_sizes, gt_sizes = self.sizes()
        overlaps = self.table[1:, 1:].tocoo()
        rows, cols = overlaps.row.astype(np.int64), overlaps.col.astype(np.int64)
        inter = overlaps.data.astype(np.float64)
        keep = inter > 0
        rows, cols, inter = rows[keep], cols[keep], inter[keep]
        ious = inter / (pred_sizes[rows] + gt_sizes[cols] - inter)
        return rows + 1, cols + 1, ious


def _sequential_index(labels: NDArray[np.integer]) -> tuple[NDArray[np.int64], int]:
    """Map labels to 0 (background) and 1..n in increasing label order."""
    ids, inverse = np.unique(labels, return_inverse=True)
    index = inverse.reshape(-1).astype(np.int64)
    if ids[0] == 0:
        return index, len(ids) - 1
    return index + 1, len(ids)


def contingency_table(pred_labels: ArrayLike, gt_labels: ArrayLike) -> Contingency:
    """Sparse contingency table of two non-negative integer label arrays of equal shape.

    Labels need not be consecutive; 0 is background. Shapes (Z, Y, X) or (Y, X).
    """
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    check_same_shape(p.shape, g.shape)
    for name, labels in (("prediction", p), ("ground truth", g)):
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise ValueError(f"{name} labels must be integers, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} labels must be non-negative")
    if p.size == 0:
        return Contingency(sparse.csr_array((1, 1), dtype=np.int64))
    rows, n_pred = _sequential_index(p)
    cols, n_gt = _sequential_index(g)
    return contingency_from_pairs(rows, cols, np.ones(rows.size, dtype=np.int64), n_pred, n_gt)


def contingency_from_pairs(
    pred_index: NDArray[np.int64],
    gt_index: NDArray[np.int64],
    counts: NDArray[np.int64],
    n_pred: int,
    n_gt: int,
) -> Contingency:
    """Contingency from (pred index, gt index, count) triples; repeated pairs are summed."""
    # Converting COO to CSR sums repeated pairs.
    return Contingency(
        sparse.coo_array((counts, (pred_index, gt_index)), shape=(n_pred + 1, n_gt + 1)).tocsr()
    )


def match_instances(
    cont: Contingency, threshold: float
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Optimal one-to-one matching of instances with IoU >= ``threshold``.

    Returns (pred index, gt index, IoU) of the matched pairs, indices 1-based as in ``cont``. The
    number of matches is maximal, ties broken by the larger total IoU.
    """
    rows, cols, ious = cont.foreground_ious()
    candidate = ious >= threshold
    rows, cols, ious = rows[candidate], cols[candidate], ious[candidate]
    if rows.size == 0:
        return rows, cols, ious
    # Candidate pairs form a sparse bipartite graph; its connected groups can be assigned
    # independently, which keeps every assignment problem tiny (almost always a single pair).
    n_pred = cont.n_pred
    graph = sparse.coo_array(
        (np.ones(rows.size), (rows - 1, n_pred + cols - 1)), shape=(n_pred + cont.n_gt,) * 2
    )
    _, group_of_node = connected_components(graph, directed=False)
    group = group_of_node[rows - 1]
    order = np.argsort(group, kind="stable")
    rows, cols, ious, group = rows[order], cols[order], ious[order], group[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], group.size]
    single = (ends - starts) == 1
    keep = np.zeros(group.size, dtype=bool)
    keep[starts[single]] = True
    for start, end in zip(starts[~single], ends[~single], strict=True):
        r, c, v = rows[start:end], cols[start:end], ious[start:end]
        r_ids, r_pos = np.unique(r, return_inverse=True)
        c_ids, c_pos = np.unique(c, return_inverse=True)
        n_matchable = min(r_ids.size, c_ids.size)
        # As StarDist / elf: each candidate is worth 1, plus IoU / (2 n) < 1/2 in total as a tie-break,
        # so the number of matches always dominates.
        cost = np.zeros((r_ids.size, c_ids.size))
        cost[r_pos, c_pos] = -1.0 - v / (2 * n_matchable)
        assigned_r, assigned_c = linear_sum_assignment(cost)
        pair_pos = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(r_pos, c_pos, strict=True))}
        for a, b in zip(assigned_r, assigned_c, strict=True):
            k = pair_pos.get((int(a), int(b)))
            if k is not None:
                keep[start + k] = True
    return rows[keep], cols[keep], ious[keep]


def segmentation_accuracy(cont: Contingency, threshold: float) -> float:
    """TP / (TP + FP + FN) at an IoU threshold ("average precision" as StarDist / micro-sam use it).

    1 when neither prediction nor truth has an instance.
    """
    if cont.n_pred + cont.n_gt == 0:
        return 1.0
    tp = match_instances(cont, threshold)[0].size
    return tp / (cont.n_pred + cont.n_gt - tp)


def mean_segmentation_accuracy(
    cont: Contingency, thresholds: tuple[float, ...] = MSA_THRESHOLDS
) -> tuple[float, tuple[float, ...]]:
    """micro-sam's mSA: mean segmentation accuracy over IoU thresholds, and the per-threshold values."""
    accuracies = tuple(segmentation_accuracy(cont, t) for t in thresholds)
    return float(np.mean(accuracies)), accuracies


def _foreground_truth_table(cont: Contingency) -> sparse.csr_array:
    # Voxels where the truth is background are excluded (connectomics convention).
    return cont.table[:, 1:].astype(np.float64)


def variation_of_information(cont: Contingency) -> tuple[float, float]:
    """(split, merge) = (H(pred | gt), H(gt | pred)) in bits over voxels with true foreground."""
    table = _foreground_truth_table(cont).tocoo()
    n = table.data.sum()
    if n == 0:
        return 0.0, 0.0
    p_ij = table.data / n
    p_pred = np.asarray(table.sum(axis=1)).ravel() / n
    p_gt = np.asarray(table.sum(axis=0)).ravel() / n
    nonzero = p_ij > 0
    p, r, c = p_ij[nonzero], table.row[nonzero], table.col[nonzero]
    split = -np.sum(p * np.log2(p / p_gt[c]))
    merge = -np.sum(p * np.log2(p / p_pred[r]))
    # Rounding can leave -0.0 or -1e-17 for a perfect match; entropies are non-negative.
    return max(float(split), 0.0), max(float(merge), 0.0)


def adapted_rand_error(cont: Contingency) -> tuple[float, float, float]:
    """(adapted Rand error, Rand precision, Rand recall) over voxels with true foreground.

    Precision: of the voxel pairs in one predicted segment, the fraction also in one true segment;
    recall: the reverse. See the module docstring for conventions and empty cases.
    """
    table = _foreground_truth_table(cont)
    n = float(table.sum())
    if n == 0:
        error = 0.0 if cont.n_pred == 0 else 1.0
        return error, 1.0 - error, 1.0 - error
    pred_sizes = np.asarray(table.sum(axis=1)).ravel()
    gt_sizes = np.asarray(table.sum(axis=0)).ravel()
    # Sums of squares minus n: ordered pairs of distinct voxels that share a segment.
    pairs_both = float(table.data @ table.data) - n
    pairs_pred = float(pred_sizes @ pred_sizes) - n
    pairs_gt = float(gt_sizes @ gt_sizes) - n
    precision = pairs_both / pairs_pred if pairs_pred > 0 else 1.0
    recall = pairs_both / pairs_gt if pairs_gt > 0 else 1.0
    total = pairs_pred + pairs_gt
    error = 1.0 - 2.0 * pairs_both / total if total > 0 else 0.0
    return float(error), float(precision), float(recall)


@dataclass(frozen=True)
class InstanceScores:
    """Instance metrics of one class (see module docstring for definitions)."""

    n_pred: int
    n_gt: int
    ap50: float
    ap75: float
    msa: float
    accuracies: tuple[float, ...]
    voi_split: float
    voi_merge: float
    arand: float
    rand_precision: float
    rand_recall: float

    @property
    def voi(self) -> float:
        return self.voi_split + self.voi_merge


def instance_scores_from_contingency(cont: Contingency) -> InstanceScores:
    """All instance metrics from one contingency table."""
    msa, accuracies = mean_segmentation_accuracy(cont)
    split, merge = variation_of_information(cont)
    arand, rand_precision, rand_recall = adapted_rand_error(cont)
    return InstanceScores(
        n_pred=cont.n_pred,
        n_gt=cont.n_gt,
        ap50=accuracies[MSA_THRESHOLDS.index(0.5)],
        ap75=accuracies[MSA_THRESHOLDS.index(0.75)],
        msa=msa,
        accuracies=accuracies,
        voi_split=split,
        voi_merge=merge,
        arand=arand,
        rand_precision=rand_precision,
        rand_recall=rand_recall,
    )


def instance_scores(
    pred: ArrayLike, gt: ArrayLike, *, connectivity: int | None = None, labelled: bool = False
) -> InstanceScores:
    """Instance metrics of one class from (Z, Y, X) (or (Y, X)) arrays.

    Args:
        pred, gt: binary masks (split into connected components), or instance label arrays with 0 as
            background when ``labelled`` is True.
        connectivity: for the components; None = full (26 in 3D, 8 in 2D).
    """
    p, g = np.asarray(pred), np.asarray(gt)
    check_same_shape(p.shape, g.shape)
    if not labelled:
        p, _ = label_instances(p, connectivity)
        g, _ = label_instances(g, connectivity)
    return instance_scores_from_contingency(contingency_table(p, g))
