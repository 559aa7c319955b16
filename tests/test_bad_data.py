"""Bad data in, sane results or a clear refusal out: NaN/Inf, constant slices, other dtypes, foreign
label codes, empty labels, one-pixel-wide slices and very anisotropic voxels."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sam4em.cli import main
from sam4em.data.class_mapping import ClassMapping, ClassMappingError
from sam4em.evaluation import evaluate_volumes
from sam4em.inference.segment import segment_volume
from sam4em.io import create_volume, open_volume
from sam4em.models import SAM4EM, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: 2 threads on 2 shared cores crawl


@pytest.fixture(scope="module")
def model() -> SAM4EM:
    """test-tiny with its output head scaled up: random weights give ~0.5 everywhere, and a test that
    compares results needs them to depend visibly on the input."""
    model = build_model("test-tiny", 1, pretrained=False).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("stage2_decoder.output_hypernetworks_mlps.0.proj_out"):
                parameter.mul_(1000)
    return model


def _em(depth: int = 4, size: int = 64) -> np.ndarray:
    """uint8 EM-like slices: a dark disc on noisy gray."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 30) ** 2 + (xx - 28) ** 2 < 12**2
    return np.clip(150 + rng.normal(0, 15, (depth, size, size)) - 80 * disc, 0, 255).astype(np.uint8)


def test_nan_and_inf_are_normalised_with_a_warning(model: SAM4EM) -> None:
    volume = _em().astype(np.float32)
    volume[0, :4, :4] = np.nan
    volume[1, 10, 10] = np.inf
    volume[2, 20, 20:30] = -np.inf
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        probs = segment_volume(volume, model)
    assert np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()


def test_constant_slices_give_no_nan(model: SAM4EM) -> None:
    volume = _em()
    volume[1] = 0  # a missing section
    volume[2] = 255  # a saturated one
    assert np.isfinite(segment_volume(volume, model)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant volume is no error either: no contrast, no warning
        assert np.isfinite(segment_volume(np.full((3, 64, 64), 7, np.uint16), model)).all()


def test_16_bit_and_float_em_segment_like_8_bit(model: SAM4EM) -> None:
    em8 = _em()
    reference = segment_volume(em8, model)
    # Percentile normalisation undoes any increasing affine map of the intensities.
    em16 = em8.astype(np.uint16) * 200 + 1000
    em32 = em8.astype(np.float32) / 255 - 0.5
    np.testing.assert_allclose(segment_volume(em16, model), reference, atol=1e-4)
    np.testing.assert_allclose(segment_volume(em32, model), reference, atol=1e-4)
    # ... and the tolerance is meaningful: the model does see the intensities.
    assert np.abs(segment_volume(255 - em8, model) - reference).max() > 1e-3


def test_one_pixel_wide_slices_are_padded(model: SAM4EM, tmp_path: Path) -> None:
    for shape in [(5, 1, 40), (5, 40, 1), (2, 1, 1)]:
        volume = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
        probs = segment_volume(volume, model)
        assert probs.shape == (1, *shape)
        assert np.isfinite(probs).all()
    # The streaming path of `sam4em segment` too.
    tifffile.imwrite(tmp_path / "thin.tif", np.full((5, 1, 40), 100, np.uint8), photometric="minisblack")
    assert main(["segment", str(tmp_path / "thin.tif"), str(tmp_path / "thin.zarr"), "--model", "test-tiny",
                 "--device", "cpu", "--direction", "forward"]) == 0
    with open_volume(tmp_path / "thin.zarr", "labels") as labels:
        assert labels.shape == (5, 1, 40)


# -- labels --------------------------------------------------------------------------------------
def _train_files(tmp_path: Path, labels: np.ndarray) -> Path:
    tifffile.imwrite(tmp_path / "image.tif", _em(depth=labels.shape[0]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    config = {
        "classes": "mito=255",
        "volumes": [{"image": str(tmp_path / "image.tif"), "labels": str(tmp_path / "labels.tif"), "val_fraction": 0.34}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": 2, "batch_size": 1, "warmup_steps": 0},
        "val_every": 1,
        "val_samples": 1,
        "tensorboard": False,
        "device": "cpu",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config.yaml"


def test_labels_without_the_mapped_codes_are_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = np.zeros((6, 64, 64), np.uint16)
    labels[:, :10] = 7
    labels[:, 50:] = 300
    config = _train_files(tmp_path, labels)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "labels.tif" in err and "255 (mito)" in err and "codes present: [0, 7, 300]" in err
    assert "fix `classes`" in err


# tests/test_class_mapping.py fuzzes parse/str/apply; this fuzzes the refusal of absent codes.
@settings(max_examples=50, deadline=None)
@given(codes=st.lists(st.integers(0, 400), min_size=1, max_size=5, unique=True), data=st.data())
def test_absent_codes_are_named_with_the_codes_present(codes: list[int], data: st.DataObject) -> None:
    mapping = ClassMapping.from_codes({f"c{i}": code for i, code in enumerate(codes)})
    present = data.draw(st.lists(st.sampled_from([0, *codes, 401]), min_size=1, unique=True))
    labels = np.array(present, np.uint16).reshape(1, 1, -1)
    missing = [code for code in codes if code not in present]
    if not missing:
        mapping.validate(labels)
        return
    with pytest.raises(ClassMappingError) as error:
        mapping.validate(labels)
    message = str(error.value)
    assert all(f"{code} (c{codes.index(code)})" in message for code in missing), message
    assert f"codes present: {sorted(present)}" in message
    if set(present) <= {0} and 0 not in codes:  # background only: an annotation without foreground
        with pytest.warns(UserWarning, match="only background"):
            mapping.validate(labels, allow_empty=True)


def test_empty_labels_still_train_and_evaluate(tmp_path: Path) -> None:
    config = _train_files(tmp_path, np.zeros((6, 64, 64), np.uint8))
    with pytest.warns(UserWarning, match=r"labels\.tif: no voxel of mito"):
        assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["val_dice_mito"])), row
    # Metrics of an empty truth are defined: perfect for an empty prediction, 0 / inf for a non-empty one.
    empty = np.zeros((4, 16, 16), np.uint8)
    spots = empty.copy()
    spots[1, 3, 3] = spots[2, 8, 9] = 1
    for pred, dice in ((empty, 1.0), (spots, 0.0)):
        scores = evaluate_volumes(pred, empty, classes={"mito": 1}).classes["mito"].values
        assert scores["dice"] == dice
        assert not any(isinstance(v, float) and np.isnan(v) for v in scores.values()), scores


# -- anisotropy ----------------------------------------------------------------------------------
def test_anisotropic_voxels_scale_distances_per_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = np.zeros((10, 20, 20), np.uint8)
    gt[3:7, 5:15, 5:15] = 1
    shifted_z, shifted_x = np.roll(gt, 1, axis=0), np.roll(gt, 1, axis=2)
    voxel = (1000.0, 1.0, 1.0)  # 1 µm sections, 1 nm pixels
    for pred, expected in ((shifted_z, 1000.0), (shifted_x, 1.0)):
        scores = evaluate_volumes(pred, gt, classes={"m": 1}, voxel_size=voxel).classes["m"].values
        assert scores["hausdorff"] == pytest.approx(expected)
    # The CLI takes the voxel size from the ground truth's file, and --voxel-size overrides it.
    for name, data in (("gt.zarr", gt), ("pred.zarr", shifted_z)):
        with create_volume(tmp_path / name, data.shape, np.uint8, voxel_size=voxel) as volume:
            volume[:] = data
    for extra, expected in (([], 1000.0), (["--voxel-size", "1,1,1"], 1.0)):
        out = tmp_path / "scores.json"
        assert main(["evaluate", str(tmp_path / "pred.zarr"), str(tmp_path / "gt.zarr"), "--classes", "m=1",
                     "--json", str(out), "--overwrite", *extra]) == 0
        assert json.loads(out.read_text())["classes"]["m"]["hausdorff"] == pytest.approx(expected)
    capsys.readouterr()
