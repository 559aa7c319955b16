"""`sam4em evaluate` checks what it is given (issue 11): every segment output type, for all classes in
one call; unfinished outputs, absent codes, wrong prediction codes and bad probabilities refused with
one line; the scores file never written over an input or an existing file without --overwrite."""

from __future__ import annotations

import json
import shutil
import warnings
from itertools import count
from pathlib import Path

import numpy as np
import pytest
import zarr

from sam4em.cli import main
from sam4em.evaluation import evaluate_files, evaluate_volumes
from sam4em.evaluation.results_file import write_json
from sam4em.fingerprint import digest_file as file_digest
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import Interrupted, segment_to_file
from sam4em.io import MissingChunksWarning, create_volume, open_volume
from sam4em.models import SAM4EM

SHAPE = (4, 64, 64)
CLASSES = ("mito", "er")
GT_CODES = "mito=255,er=128"
SEGMENT = {"direction": "forward", "block_size": 2, "overlap": 0}


@pytest.fixture(scope="module")
def model(decisive_tiny_model) -> SAM4EM:
    """test-tiny, random weights, mask logits scaled so that its 0/1 decisions vary over the volume."""
    return decisive_tiny_model(CLASSES)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw.tif and gt.tif (mito=255 on bright voxels, er=128 on dark ones)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    raw = (rng.random(SHAPE) * 80 + np.linspace(0, 170, SHAPE[2])[None, None, :]).astype(np.uint8)
    gt = np.where(raw > 170, 255, np.where(raw < 50, 128, 0)).astype(np.uint8)
    _write(folder / "raw.tif", raw)
    _write(folder / "gt.tif", gt)
    return folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, data: Path, model: SAM4EM) -> dict[str, Path]:
    """One `segment` output of every type, from the same model and input."""
    folder = tmp_path_factory.mktemp("outputs")
    raw = data / "raw.tif"
    return {
        "probs": segment_to_file(
            raw,
            folder / "probs.zarr",
            model,
            SegmentOptions(output_type="probs", **SEGMENT),
        ),
        "probs_uint8": segment_to_file(
            raw,
            folder / "p8.zarr",
            model,
            SegmentOptions(probs_dtype="uint8", **SEGMENT),
        ),
        "labels": segment_to_file(
            raw,
            folder / "labels.zarr",
            model,
            SegmentOptions(output_type="labels", **SEGMENT),
        ),
        "instances": segment_to_file(
            raw,
            folder / "inst.zarr",
            model,
            SegmentOptions(output_type="instances", **SEGMENT),
        ),
        "labels_tif": segment_to_file(
            raw,
            folder / "labels.tif",
            model,
            SegmentOptions(output_type="labels", **SEGMENT),
        ),
    }


def _write(path: Path, data: np.ndarray) -> Path:
    with create_volume(path, data.shape, data.dtype) as volume:
        volume[:] = data
    return path


def _scores(results: dict) -> dict[str, float]:
    return {name: metrics["dice"] for name, metrics in results["classes"].items()}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sam4em: error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# -- item 10: segment -> evaluate, every output type, all classes, one call -------------------------
def test_evaluate_reads_every_segment_output_type_for_all_classes_in_one_call(
    tmp_path: Path, data: Path, outputs: dict[str, Path]
) -> None:
    with open_volume(data / "gt.tif") as volume:
        gt = volume[:]
    probs = []
    for name in CLASSES:
        with open_volume(outputs["probs"], name) as volume:
            probs.append(volume[:].astype(np.float32))
    with open_volume(outputs["labels"]) as volume:
        labels = volume[:]
    # References: the metrics of the arrays themselves, with the class codes written out by hand.
    codes = {"mito": 255, "er": 128}
    expected_probs = _scores(evaluate_volumes(np.stack(probs), gt, classes=codes).as_dict())
    expected_labels = _scores(evaluate_volumes(labels, gt, classes=codes, pred_classes={"mito": 1, "er": 2}).as_dict())
    assert len(set(expected_labels.values())) > 1 and 0 < min(expected_labels.values()) < 1
    for kind, expected in (("probs", expected_probs), ("labels", expected_labels), ("labels_tif", expected_labels),
                           ("instances", expected_labels)):
        scores = tmp_path / f"{kind}.json"
        assert main(["evaluate", str(outputs[kind]), str(data / "gt.tif"), "--classes", GT_CODES,
                     "--json", str(scores), "--no-progress"]) == 0, kind
        assert _scores(json.loads(scores.read_text())) == pytest.approx(expected, abs=1e-12), kind
    # uint8 probabilities (round(p * 255)) are scaled back: thresholds at 0.5 agree but for rounding.
    uint8 = _scores(evaluate_files(outputs["probs_uint8"], data / "gt.tif", classes=GT_CODES).as_dict())
    assert uint8 == pytest.approx(expected_probs, abs=0.02)
    # A subset of the classes, in another order, and one class's array by its key.
    subset = evaluate_files(outputs["labels"], data / "gt.tif", classes="er=128").as_dict()
    assert _scores(subset) == pytest.approx({"er": expected_labels["er"]})
    one = evaluate_files(f"{outputs['probs']}:er", data / "gt.tif", classes="er=128").as_dict()
    assert _scores(one) == pytest.approx({"er": expected_probs["er"]})


def test_evaluate_names_the_classes_a_segment_output_holds(
    data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for kind in ("probs", "labels", "instances"):
        assert main(["evaluate", str(outputs[kind]), str(data / "gt.tif"), "--classes", "mitochondria=255,er=128"]) == 2
        line = _one_error_line(capsys)
        assert "holds the classes mito, er" in line and "mitochondria" in line and "--input-key" not in line, line
    assert main(["evaluate", str(outputs["labels"]), str(data / "gt.tif"), "--classes", GT_CODES,
                 "--pred-classes", "mito=1,er=2"]) == 2
    assert "drop pred_classes / --pred-classes" in _one_error_line(capsys)


# -- item 5: unfinished outputs ---------------------------------------------------------------------
def test_evaluate_refuses_an_unfinished_segment_output(
    tmp_path: Path, data: Path, model: SAM4EM, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind in ("probs", "labels", "instances"):
        out = tmp_path / f"{kind}.zarr"
        stop_after_first_block = (lambda calls: lambda: next(calls) >= 1)(count())
        with pytest.raises(Interrupted):
            segment_to_file(
                data / "raw.tif",
                out,
                model,
                SegmentOptions(output_type=kind, **SEGMENT),
                stop=stop_after_first_block,
            )
        assert main(["evaluate", str(out), str(data / "gt.tif"), "--classes", GT_CODES]) == 2
        line = _one_error_line(capsys)
        assert "unfinished `sam4em segment` output" in line and "--resume" in line, line
        if kind == "labels":
            assert "(1 of 2 z-blocks written)" in line


# -- item 6: numbers that would be silently wrong ---------------------------------------------------
def test_evaluate_refuses_a_class_code_absent_from_the_ground_truth(
    data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(outputs["labels"]), str(data / "gt.tif"), "--classes", "mito=225,er=128"]) == 2
    line = _one_error_line(capsys)
    assert "gt.tif: the ground truth has no voxel of mito=225 (codes present: [0, 128, 255])" in line, line
    assert "--allow-absent-classes" in line


def test_allow_absent_classes_scores_a_class_missing_from_the_ground_truth() -> None:
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, 2:4, 2:4] = 1  # class 1 only; class 2 truly absent
    pred = gt.copy()
    with pytest.raises(ValueError, match=r"no voxel of b=2 \(codes present: \[0, 1\]\)"):
        evaluate_volumes(pred, gt, classes={"a": 1, "b": 2})
    scores = evaluate_volumes(pred, gt, classes={"a": 1, "b": 2}, allow_absent_classes=True).as_dict()["classes"]
    assert scores["a"]["dice"] == 1.0 and scores["b"]["dice"] == 1.0  # empty in both: perfect, as documented


def test_evaluate_refuses_a_0_255_mask_without_pred_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = np.zeros((3, 16, 16), np.uint8)
    gt[:, 4:10, 4:10] = 255
    _write(tmp_path / "gt.tif", gt)
    _write(tmp_path / "mask.tif", gt)  # a perfect prediction, stored as 0/255
    command = ["evaluate", str(tmp_path / "mask.tif"), str(tmp_path / "gt.tif"), "--classes", "mito=255"]
    assert main(command) == 2
    line = _one_error_line(capsys)
    assert "mask.tif: holds codes [255] that no class names" in line and "--pred-classes mito=255" in line, line
    assert main([*command, "--pred-classes", "mito=255", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["classes"]["mito"]["dice"] == 1.0


def _swapped_codes_truth() -> np.ndarray:
    """Two classes whose ground-truth codes are 1..C in the other order: a=2, b=1."""
    gt = np.zeros((3, 12, 12), np.uint8)
    gt[:, 1:5, 1:5] = 2  # a
    gt[:, 7:11, 6:11] = 1  # b
    return gt


def test_evaluate_refuses_default_codes_the_ground_truth_uses_in_another_order() -> None:
    gt = _swapped_codes_truth()
    # A perfect prediction in the ground truth's codes would score Dice 0 with the defaults a=1, b=2.
    with pytest.raises(ValueError, match=r"codes are ambiguous: .*e\.g\. the ground truth's codes --pred-classes a=2,b=1"):
        evaluate_volumes(gt.copy(), gt, classes={"a": 2, "b": 1})
    scores = evaluate_volumes(gt.copy(), gt, classes={"a": 2, "b": 1}, pred_classes={"a": 2, "b": 1}).as_dict()
    assert _scores(scores) == {"a": 1.0, "b": 1.0}
    # Classes given in code order, and channel stacks (ordered by classes, not by codes), are not ambiguous.
    assert _scores(evaluate_volumes(gt.copy(), gt, classes={"b": 1, "a": 2}).as_dict()) == {"b": 1.0, "a": 1.0}
    channels = np.stack([gt == 2, gt == 1])
    assert _scores(evaluate_volumes(channels, gt, classes={"a": 2, "b": 1}).as_dict()) == {"a": 1.0, "b": 1.0}


def test_cli_refuses_ambiguous_default_codes_in_one_line_but_not_for_sam4em_outputs(
    tmp_path: Path, data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gt = _swapped_codes_truth()
    pred, truth = _write(tmp_path / "pred.tif", gt), _write(tmp_path / "gt.tif", gt)
    command = ["evaluate", str(pred), str(truth), "--classes", "a=2,b=1", "--no-progress"]
    assert main(command) == 2
    line = _one_error_line(capsys)
    assert "pred.tif" in line and "codes are ambiguous" in line and "--pred-classes a=2,b=1" in line, line
    assert main([*command, "--pred-classes", "a=2,b=1", "--json", str(tmp_path / "s.json")]) == 0
    assert _scores(json.loads((tmp_path / "s.json").read_text())) == {"a": 1.0, "b": 1.0}
    # A sam4em output records its classes: a ground truth coded 1..C in another order is read by name.
    with open_volume(data / "gt.tif") as volume:
        recoded = np.select([volume[:] == 255, volume[:] == 128], [2, 1], 0).astype(np.uint8)
    recoded_gt = _write(tmp_path / "recoded_gt.tif", recoded)
    expected = _scores(evaluate_files(outputs["labels"], data / "gt.tif", classes=GT_CODES).as_dict())
    assert _scores(evaluate_files(outputs["labels"], recoded_gt, classes="mito=2,er=1").as_dict()) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "holds NaN probabilities"),
     (3.5, "a floating prediction is read as probabilities in \\[0, 1\\] but holds values from 0 to 3.5 \\(logits\\?"),
     (-0.5, "a floating prediction .* holds values from -0.5 to 0.9")],
)
def test_evaluate_refuses_nan_or_out_of_range_probabilities(value: float, message: str) -> None:
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[:, :4] = 1
    probs = np.where(gt == 1, 0.9, 0.0).astype(np.float32)
    probs[1, 6, 6] = value
    with pytest.raises(ValueError, match=f"prediction: {message}"):
        evaluate_volumes(probs, gt, classes={"m": 1})
    with pytest.raises(ValueError, match=message):
        evaluate_volumes(probs[None], gt, classes={"m": 1}, chunk_slices=1)


# -- item 7 (evaluation side): ground truth with chunks missing ------------------------------------
def test_evaluate_refuses_ground_truth_with_missing_chunks_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1
    array = zarr.create_array(tmp_path / "gt.zarr", shape=gt.shape, dtype=np.uint8, chunks=(1, 8, 8))
    array[:] = gt
    shutil.rmtree(tmp_path / "gt.zarr" / "c" / "1")  # the chunk of slice 1 is lost
    _write(tmp_path / "pred.tif", gt)
    command = ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.zarr"), "--classes", "m=1", "--no-progress"]
    assert main(command) == 2
    line = _one_error_line(capsys)
    assert "gt.zarr: 1 of 4 chunks are missing" in line and "--allow-missing-chunks" in line, line
    with pytest.warns(MissingChunksWarning, match="gt.zarr: 1 of 4 chunks are missing"):
        assert main([*command, "--allow-missing-chunks", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["classes"]["m"]["fp"] == 16  # slice 1 read as background


# -- item 1: the scores file ------------------------------------------------------------------------
def test_evaluate_refuses_json_over_its_own_input(
    data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gt, labels, probs = data / "gt.tif", outputs["labels_tif"], outputs["probs"]
    before = {path: file_digest(path) for path in (gt, labels, probs)}
    # The ground truth, the prediction, and a file inside the prediction's Zarr folder.
    for pred, target in ((labels, gt), (labels, labels), (probs, probs / "scores.json")):
        for extra in ([], ["--overwrite"]):
            assert main(["evaluate", str(pred), str(gt), "--classes", GT_CODES, "--json", str(target), *extra]) == 2
            line = _one_error_line(capsys)
            assert f"{target}: is " in line and "write the scores to another file" in line, line
    assert {path: file_digest(path) for path in (gt, labels, probs)} == before


def test_evaluate_refuses_json_over_an_existing_file_without_overwrite(
    tmp_path: Path, data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.json"
    scores.write_text("earlier results")
    command = ["evaluate", str(outputs["labels"]), str(data / "gt.tif"), "--classes", GT_CODES, "--json", str(scores)]
    assert main(command) == 2
    assert "scores.json: already exists (pass overwrite=True / --overwrite" in _one_error_line(capsys)
    assert scores.read_text() == "earlier results"
    assert main([*command, "--overwrite", "--no-progress"]) == 0
    assert set(json.loads(scores.read_text())["classes"]) == set(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]  # no temporary file left


def test_write_json_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "scores.json"
    target.write_text("another writer")
    with pytest.raises(FileExistsError, match=r"scores\.json: already exists"):
        write_json(target, {"dice": 1.0})
    assert target.read_text() == "another writer" and len(list(tmp_path.iterdir())) == 1


def test_evaluate_json_into_a_missing_folder_is_one_line_before_evaluating(
    tmp_path: Path, data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "scores.json"
    assert main(["evaluate", str(outputs["labels"]), str(data / "gt.tif"), "--classes", GT_CODES,
                 "--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the evaluation ran
    assert f"sam4em: error: {target}: folder {tmp_path / 'no' / 'such'} does not exist" in captured.err
    assert ".tmp" not in captured.err and "Traceback" not in captured.err


# -- item 11: --no-progress -------------------------------------------------------------------------
def test_evaluate_no_progress_prints_no_bar(
    data: Path, outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["evaluate", str(outputs["labels"]), str(data / "gt.tif"), "--classes", GT_CODES, "--chunk-slices", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm may warn about its notebook display
        assert main(command) == 0
        assert "evaluate:" in capsys.readouterr().err
        assert main([*command, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "mito" in captured.out


def test_probabilities_of_a_sam4em_output_in_a_container_key(
    tmp_path: Path, data: Path, model: SAM4EM
) -> None:
    """`segment out.h5:seg --output-type probs` writes seg/mito and seg/er: `out.h5:seg` is the prediction."""
    out = segment_to_file(
        data / "raw.tif",
        tmp_path / "out.h5",
        model,
        SegmentOptions(output_key="seg", **SEGMENT),
    )
    with create_volume(tmp_path / "out.h5", SHAPE, np.uint8, key="raw") as extra:
        extra[:] = 0  # another array in the same file is not a class
    results = evaluate_files(f"{out}:seg", data / "gt.tif", classes=GT_CODES).as_dict()
    assert set(results["classes"]) == set(CLASSES)


def test_evaluate_reads_ome_zarr_segment_outputs_like_the_others(
    tmp_path: Path, data: Path, model: SAM4EM, outputs: dict[str, Path]
) -> None:
    gt = data / "gt.tif"
    for kind, reference in (("labels", "labels"), ("instances", "labels"), ("probs", "probs")):
        out = segment_to_file(
            data / "raw.tif",
            tmp_path / f"{kind}.ome.zarr",
            model,
            SegmentOptions(output_type=kind, **SEGMENT),
        )
        expected = _scores(evaluate_files(outputs[reference], gt, classes=GT_CODES).as_dict())
        assert _scores(evaluate_files(out, gt, classes=GT_CODES).as_dict()) == pytest.approx(expected, abs=1e-12), kind
    one = evaluate_files(tmp_path / "labels.ome.zarr", gt, pred_key="labels/er", classes="er=128").as_dict()
    assert _scores(one) == pytest.approx({"er": _scores(evaluate_files(outputs["labels"], gt, classes="er=128").as_dict())["er"]})
