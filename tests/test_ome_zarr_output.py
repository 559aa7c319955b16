"""OME-Zarr (NGFF 0.5) outputs of `sam4em segment`: valid metadata, scale in nm, pyramids, resume."""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels

from sam4em.cli import main
from sam4em.evaluation.measure import measure_objects
from sam4em.evaluation.measure_file import measure_file
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import COMPLETE, Interrupted, segment_to_file
from sam4em.io import VolumeError, create_volume, open_volume
from sam4em.io.ome_zarr_output import downsample, open_output, pyramid_shapes
from sam4em.models import SAM4EM, save_model

SHAPE = (5, 136, 128)  # two pyramid levels (y, x halved once stay >= 64)
VOXEL_SIZE = (30.0, 5.0, 5.0)
CLASSES = ("mito", "er")
FAST = {"direction": "forward", "block_size": 2}


@pytest.fixture(scope="module")
def model(one_thread: None, decisive_tiny_model) -> SAM4EM:
    """test-tiny with random weights, logits scaled up so that both classes get voxels."""
    return decisive_tiny_model(CLASSES)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = (rng.random(SHAPE) * 60 + np.linspace(0, 190, SHAPE[2])[None, None, :]).astype(np.uint8)
    path = tmp_path_factory.mktemp("raw") / "raw.zarr"
    with create_volume(path, SHAPE, np.uint8, voxel_size=VOXEL_SIZE) as out:
        out[:] = volume
    return path, volume


@pytest.fixture(scope="module")
def class_map(
    tmp_path_factory: pytest.TempPathFactory, raw: tuple[Path, np.ndarray], model: SAM4EM
) -> np.ndarray:
    """The plain (non-OME) label output of the same run: 0, 1 (mito), 2 (er)."""
    out = segment_to_file(
        raw[0],
        tmp_path_factory.mktemp("plain") / "labels.zarr",
        model,
        SegmentOptions(output_type="labels", **FAST),
    )
    with open_volume(out, "labels") as volume:
        labels = volume[:]
    assert set(np.unique(labels)) == {0, 1, 2}  # both classes present: the masks below are not trivial
    return labels


def _levels(path: Path, key: str) -> list[np.ndarray]:
    group = zarr.open_group(str(path / key) if key else str(path), mode="r")
    return [np.asarray(group[d["path"]][:]) for d in group.attrs["ome"]["multiscales"][0]["datasets"]]


def _check_pyramid(levels: list[np.ndarray], method: str) -> None:
    assert len(levels) == len(pyramid_shapes(SHAPE)) == 2
    for parent, child in pairwise(levels):
        np.testing.assert_array_equal(child, downsample(parent, method))  # type: ignore[arg-type]


def test_labels_output_validates_and_opens_at_scale(tmp_path, raw, model, class_map):
    out = segment_to_file(
        raw[0],
        tmp_path / "seg.ome.zarr",
        model,
        SegmentOptions(output_type="labels", **FAST),
    )
    root = zarr.open_group(str(out), mode="r")
    assert isinstance(open_ome_zarr(root), Image)
    Labels.from_zarr(root["labels"])
    for name in CLASSES:
        ImageLabel.from_zarr(root[f"labels/{name}"])
        assert root[f"labels/{name}"].attrs["ome"]["image-label"]["properties"] == [
            {"label-value": 1, "class": name}
        ]
    for value, name in enumerate(CLASSES, start=1):
        levels = _levels(out, f"labels/{name}")
        np.testing.assert_array_equal(levels[0], (class_map == value).astype(np.uint8))
        _check_pyramid(levels, "nearest")
    raw_levels = _levels(out, "")
    np.testing.assert_array_equal(raw_levels[0], raw[1])
    _check_pyramid(raw_levels, "mean")

    nodes = list(Reader(parse_url(str(out)))())
    images = {n.metadata["name"]: n for n in nodes if n.data}
    assert set(images) == {"input", *CLASSES}
    for node in images.values():
        scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
        assert scales == [list(VOXEL_SIZE), [30.0, 10.0, 10.0]]
        assert [a["unit"] for a in node.metadata["axes"]] == ["nanometer"] * 3
        assert node.data[0].shape == SHAPE
    # sam4em reads it back at the same scale: images, and single levels by their own metadata
    for key, size in (
        (None, VOXEL_SIZE),
        ("labels/mito", VOXEL_SIZE),
        ("0", VOXEL_SIZE),
        ("labels/er/1", (30.0, 10.0, 10.0)),
    ):
        with open_volume(out, key) as volume:
            assert volume.voxel_size == pytest.approx(size), key
    # `sam4em measure` names the objects of labels/<class> by that class
    table = tmp_path / "er.csv"
    measure_file(f"{out}:labels/er", table)
    expected = measure_objects(class_map == 2, VOXEL_SIZE, classes={"er": 1})
    with table.open() as stream:
        rows = list(csv.DictReader(stream))
    assert {r["class"] for r in rows} == {"er"}
    assert [int(r["voxel_count"]) for r in rows] == list(expected["voxel_count"])


def test_resume_equals_uninterrupted(tmp_path, raw, model):
    reference = segment_to_file(
        raw[0],
        tmp_path / "ref.ome.zarr",
        model,
        SegmentOptions(output_type="labels", **FAST),
    )
    out = tmp_path / "seg.ome.zarr"
    calls = iter([False, True])  # one block, then stop
    with pytest.raises(Interrupted):
        segment_to_file(
            raw[0],
            out,
            model,
            SegmentOptions(output_type="labels", **FAST),
            stop=lambda: next(calls),
        )
    with open_output(out, "labels/mito") as volume:
        assert volume.attrs[COMPLETE] is False
    assert _levels(out, "labels/mito")[0][2:].max() == 0  # later blocks not written yet
    segment_to_file(raw[0], out, model, SegmentOptions(output_type="labels", resume=True, **FAST))
    for key in ("", "labels/mito", "labels/er"):
        for done, expected in zip(_levels(out, key), _levels(reference, key), strict=True):
            np.testing.assert_array_equal(done, expected)
    Image.from_zarr(zarr.open_group(str(out), mode="r"))


def test_cli_probabilities_with_ome_switch(tmp_path, raw, model):
    run_dir = tmp_path / "run"
    save_model(model, run_dir)
    out = tmp_path / "probs.zarr"
    args = ["segment", str(raw[0]), str(out), "--model", str(run_dir), "--output-type", "probs", "--ome",
            "--direction", "forward", "--block-size", "2"]  # fmt: skip
    assert main(args) == 0
    group = zarr.open_group(str(out / "probabilities"), mode="r")
    image = Image.from_zarr(group)
    assert [a.name for a in image.attributes.ome.multiscales[0].axes] == ["c", "z", "y", "x"]
    assert [c["label"] for c in group.attrs["ome"]["omero"]["channels"]] == list(CLASSES)
    levels = _levels(out, "probabilities")
    assert levels[0].shape == (2, *SHAPE) and levels[0].dtype == np.float16
    expected = segment_to_file(
        raw[0],
        tmp_path / "plain.zarr",
        model,
        SegmentOptions(output_type="probs", **FAST),
    )
    for c, name in enumerate(CLASSES):
        with open_volume(expected, name) as volume:
            np.testing.assert_array_equal(levels[0][c], volume[:])
    np.testing.assert_array_equal(levels[1], downsample(levels[0], "mean"))
    assert levels[1].astype(np.float32).std() > 1e-3  # not a constant image


def test_instances_per_class(tmp_path, raw, model, class_map):
    out = segment_to_file(
        raw[0],
        tmp_path / "inst.ome.zarr",
        model,
        SegmentOptions(output_type="instances", **FAST),
    )
    ids = {name: _levels(out, f"labels/{name}")[0] for name in CLASSES}
    for value, name in enumerate(CLASSES, start=1):
        assert ids[name].dtype == np.uint32
        np.testing.assert_array_equal(ids[name] > 0, class_map == value)
        ImageLabel.from_zarr(zarr.open_group(str(out / "labels" / name), mode="r"))
    assert not set(np.unique(ids["mito"])[1:]) & set(np.unique(ids["er"])[1:])


def test_napari_ome_zarr_reader_scale(tmp_path, raw, model):
    reader = pytest.importorskip("napari_ome_zarr").napari_get_reader
    out = segment_to_file(
        raw[0],
        tmp_path / "seg.ome.zarr",
        model,
        SegmentOptions(output_type="labels", **FAST),
    )
    layers = reader(str(out))(str(out))
    assert [kind for _, _, kind in layers] == ["image", "labels", "labels"]
    for data, kwargs, _ in layers:
        assert list(kwargs["scale"]) == list(VOXEL_SIZE)
        assert kwargs["units"] == ("nanometer",) * 3
        assert data[0].shape == SHAPE and len(data) == 2  # both pyramid levels
    assert [kwargs["properties"]["class"] for _, kwargs, _ in layers[1:]] == [["mito"], ["er"]]


def test_refusals(tmp_path, raw, model):
    with pytest.raises(ValueError, match=r"OME-Zarr outputs are whole \.zarr stores"):
        segment_to_file(
            raw[0],
            tmp_path / "out.h5",
            model,
            SegmentOptions(output_type="labels", ome=True, **FAST),
        )


def test_measure_refuses_the_ome_root_image_and_names_the_class_masks(tmp_path, raw, model, class_map):
    out = segment_to_file(
        raw[0],
        tmp_path / "seg.ome.zarr",
        model,
        SegmentOptions(output_type="labels", **FAST),
    )
    # The root is the input EM (for viewers): its gray values must not be measured as class codes.
    with pytest.raises(VolumeError, match=r"input EM, not labels.*seg\.ome\.zarr:labels/er"):
        measure_file(out, tmp_path / "objects.csv")
    assert not (tmp_path / "objects.csv").exists()
    measure_file(f"{out}:labels/mito", tmp_path / "objects.csv")
    with (tmp_path / "objects.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["class"] for row in rows} == {"mito"}
    assert sum(int(row["voxel_count"]) for row in rows) == int((class_map == 1).sum())


def test_dask_workers_write_the_same_ome_zarr_as_one_process(tmp_path, raw, model):
    """`--workers 2` on an .ome.zarr output: each worker writes its blocks' pyramid levels; the result
    equals one process's and validates. About 15 s, most of it the workers importing torch."""
    from sam4em.inference.distributed import segment_to_file_dask

    options = SegmentOptions(output_type="labels", **FAST)
    reference = segment_to_file(raw[0], tmp_path / "one.ome.zarr", model, options)
    run_dir = save_model(model, tmp_path / "run")
    out = segment_to_file_dask(raw[0], tmp_path / "two.ome.zarr", run_dir, options, workers=2)
    for key in ("", "labels/mito", "labels/er"):
        for written, expected in zip(_levels(out, key), _levels(reference, key), strict=True):
            np.testing.assert_array_equal(written, expected)
    with open_output(out, "labels/mito") as volume:
        assert volume.attrs[COMPLETE] is True
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
