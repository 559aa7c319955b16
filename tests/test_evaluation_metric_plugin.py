"""Streaming metrics: exact chunk by chunk, added with one class, one default for label-map codes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from sam4em.cli import main
from sam4em.evaluation import (
    METRICS,
    ClassChunk,
    MetricContext,
    StreamingMetric,
    evaluate_files,
    evaluate_volumes,
    format_table,
    register_metric,
    unregister_metric,
)
from sam4em.evaluation.metric_registry import distance_keys, score_keys, table_keys
from sam4em.evaluation.streaming_metric import ScoreValue, chunk_bounds
from sam4em.io import create_volume


class ForegroundFraction(StreamingMetric[float]):
    """A toy metric: the fraction of the evaluated voxels the prediction calls foreground."""

    name = "foreground_fraction"
    keys = ("pred_foreground_fraction",)
    table_keys = keys

    def __init__(self, context: MetricContext) -> None:
        super().__init__(context)
        self.foreground = self.voxels = 0

    def add(self, chunk: ClassChunk) -> None:
        self.foreground += int(chunk.pred.sum())
        self.voxels += int(chunk.pred.size if chunk.mask is None else chunk.mask.sum())

    def result(self) -> float:
        return self.foreground / self.voxels

    def values(self, result: float) -> dict[str, ScoreValue]:
        return {"pred_foreground_fraction": result}


def _blobs(shape: tuple[int, int, int], seed: int, fraction: float) -> np.ndarray:
    """Smooth random binary blobs (organelle-like) that span several slices, so they cross chunk borders."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (2.0, 1.5, 1.5))
    return noise > np.quantile(noise, 1 - fraction)


def _same(first: dict[str, ScoreValue], second: dict[str, ScoreValue]) -> bool:
    """Exactly equal, NaN equal to NaN."""
    return first.keys() == second.keys() and all(
        a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(first.values(), second.values(), strict=True)
    )


def _fed(
    metric_class: type[StreamingMetric[Any]], pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, chunk_slices: int
) -> dict[str, ScoreValue]:
    """The metric's values after feeding the masked volumes in chunks, as evaluate_volumes does."""
    metric = metric_class(MetricContext(connectivity=None, spacing=(40.0, 8.0, 6.0)))
    for bounds in chunk_bounds(pred.shape[0], chunk_slices):
        halo = slice(bounds.h0, bounds.h1)
        metric.add(ClassChunk(pred[halo] & mask[halo], gt[halo] & mask[halo], mask[halo], bounds.core, bounds.z0))
    return metric.values(metric.result())


@pytest.mark.parametrize("metric_class", [*METRICS.values(), ForegroundFraction], ids=lambda m: m.name)
def test_every_metric_gives_the_same_result_chunk_by_chunk_as_whole(metric_class: type[StreamingMetric[Any]]) -> None:
    shape = (9, 20, 22)
    gt = _blobs(shape, 2, 0.25)
    # The truth shifted by one voxel: objects that match (ap50 > 0), none exactly (msa < 1).
    pred = np.roll(gt, 1, axis=2)
    mask = np.ones(shape, dtype=bool)
    mask[:, :, -3:] = False  # a masked-out band, so masked counts differ from plain ones
    whole = _fed(metric_class, pred, gt, mask, chunk_slices=shape[0])
    assert set(whole) == set(metric_class.keys)
    if metric_class.name == "instances":  # the overlap matching is exercised, not compared as 0 == 0
        assert float(whole["ap50"]) > 0 and 0 < float(whole["msa"]) < 1, whole
    for chunk_slices in (1, 2, 4):
        assert _same(_fed(metric_class, pred, gt, mask, chunk_slices), whole), (metric_class.name, chunk_slices)


def test_the_built_in_metrics_report_the_28_keys_in_their_order() -> None:
    keys = [key for metric in METRICS.values() for key in metric.keys]
    assert keys[:6] == ["dice", "iou", "dice_slice_mean", "iou_slice_mean", "precision", "recall"]
    assert keys[-4:] == ["flicker_pred", "flicker_gt", "flicker_ratio", "flicker_diff"]
    assert len(keys) == len(set(keys)) == 28


def test_the_result_is_typed_per_metric_and_its_json_form_flat() -> None:
    from sam4em.evaluation import FlickerScores, InstanceScores, OverlapScores, SurfaceDistances

    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[:, 2:5, 3:6] = 1
    result = evaluate_volumes(pred, gt, classes={"mito": 1}, voxel_size=(40, 8, 8))
    scores = result.classes["mito"]
    kinds = {"overlap": OverlapScores, "surface": SurfaceDistances, "instances": InstanceScores}
    kinds["flicker"] = FlickerScores
    assert {name: type(value) for name, value in scores.results.items()} == kinds
    assert scores.values["dice"] == pytest.approx(2 * 6 / (9 + 9))  # 6 of 9 voxels per slice overlap
    assert result.distance_unit == "nm"
    assert result.as_dict()["classes"]["mito"] == scores.values


def _write(path: Path, data: np.ndarray) -> str:
    with create_volume(path, data.shape, data.dtype) as volume:
        volume[:] = data
    return str(path)


def test_adding_a_metric_takes_one_class(tmp_path: Path) -> None:
    shape = (6, 16, 16)
    pred, gt = _blobs(shape, 3, 0.3), _blobs(shape, 4, 0.3)
    register_metric(ForegroundFraction)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_metric(ForegroundFraction)
        result = evaluate_volumes(pred, gt.astype(np.uint8), classes={"mito": 1}, chunk_slices=4)
        scores = result.classes["mito"].values
        assert scores["pred_foreground_fraction"] == pytest.approx(pred.mean())
        assert list(scores)[:2] == ["dice", "iou"] and list(scores)[-1] == "pred_foreground_fraction"
        # The summary table shows it as its last column, after the built-in ones.
        header, _, row = format_table(result).splitlines()
        assert header.split()[-2:] == ["flicker_ratio", "pred_foreground_fraction"]
        assert row.split()[-1] == f"{pred.mean():.4f}"
        assert table_keys()[-1] == score_keys()[-1] == "pred_foreground_fraction"
        # The files path writes it too.
        pred_file = _write(tmp_path / "pred.tif", pred.astype(np.uint8))
        gt_file = _write(tmp_path / "gt.tif", gt.astype(np.uint8))
        evaluate_files(pred_file, gt_file, classes="mito=1", json_path=tmp_path / "s.json")
        written = json.loads((tmp_path / "s.json").read_text())["classes"]["mito"]
        assert written["pred_foreground_fraction"] == pytest.approx(pred.mean())
    finally:
        unregister_metric(ForegroundFraction.name)
    result = evaluate_volumes(pred, gt, classes={"mito": 1})
    assert "pred_foreground_fraction" not in result.classes["mito"].values
    assert "pred_foreground_fraction" not in format_table(result)


def test_the_built_in_metrics_declare_the_summary_table_and_the_distance_keys() -> None:
    assert table_keys() == (
        "dice", "iou", "dice_slice_mean", "precision", "recall", "hd95", "assd", "ap50", "ap75", "msa",
        "voi_split", "voi_merge", "arand", "flicker_pred", "flicker_gt", "flicker_ratio",
    )  # fmt: skip
    assert distance_keys() == {"hd95", "assd", "hausdorff"}
    gt = np.zeros((2, 6, 6), np.uint8)
    gt[:, 1:4, 1:4] = 1
    header = format_table(evaluate_volumes(gt.copy(), gt, classes={"m": 1}, voxel_size=(40, 8, 8))).splitlines()[0]
    assert header.split()[:8] == ["class", "dice", "iou", "dice_slice_mean", "precision", "recall", "hd95", "[nm]"]


def test_a_metric_showing_keys_it_does_not_report_is_refused() -> None:
    class Undeclared(ForegroundFraction):
        name = "undeclared"
        distance_keys = ("pred_foreground_distance",)

    with pytest.raises(ValueError, match="shows keys \\['pred_foreground_distance'\\] it does not report"):
        register_metric(Undeclared)
    assert "undeclared" not in METRICS


def test_a_metric_whose_keys_clash_is_refused() -> None:
    class Clash(ForegroundFraction):
        name = "clash"
        keys = ("dice",)

    with pytest.raises(ValueError, match="reports keys \\['dice'\\] twice"):
        register_metric(Clash)
    assert "clash" not in METRICS


def test_cli_and_library_give_the_same_scores_without_pred_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A label-map prediction another tool wrote (1 = mito, 2 = er) against a ground truth coded 255/128.
    shape = (7, 18, 18)
    mito, er = _blobs(shape, 5, 0.2), _blobs(shape, 6, 0.2)
    gt = np.where(mito, 255, np.where(er, 128, 0)).astype(np.uint8)
    pred = np.zeros(shape, np.uint8)
    pred[np.roll(mito, 1, axis=2)] = 1
    pred[np.roll(er, -1, axis=1) & (pred == 0)] = 2
    pred_file, gt_file = _write(tmp_path / "pred.tif", pred), _write(tmp_path / "gt.tif", gt)
    codes = {"mito": 255, "er": 128}
    library = evaluate_volumes(pred, gt, classes=codes).as_dict()["classes"]
    assert all(0.2 < library[name]["dice"] < 0.99 for name in codes)
    assert main(["evaluate", pred_file, gt_file, "--classes", "mito=255,er=128", "--json",
                 str(tmp_path / "cli.json"), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "cli.json").read_text())["classes"] == library
    assert evaluate_files(pred_file, gt_file, classes=codes).as_dict()["classes"] == library
    # A prediction with the ground truth's codes is refused the same way by both, naming the fix.
    with pytest.raises(ValueError, match="--pred-classes mito=255"):
        evaluate_volumes(gt, gt, classes={"mito": 255})
    assert main(["evaluate", gt_file, gt_file, "--classes", "mito=255", "--no-progress"]) == 2
    assert "--pred-classes mito=255" in capsys.readouterr().err
