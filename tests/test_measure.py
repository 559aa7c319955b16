"""`measure_objects` and `sam4em measure`: per-object tables against skimage, and chunk invariance."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as skimage_label
from skimage.measure import marching_cubes, mesh_surface_area, regionprops

from sam4em.cli import main
from sam4em.evaluation.measure import measure_objects, write_csv
from sam4em.evaluation.measure_file import measure_file
from sam4em.io import VolumeError, create_volume
from sam4em.io.output_record import BLOCKS_DONE, COMPLETE, INSTANCE_RANGES, RUN_RECORD

VOXEL = (30.0, 4.0, 5.0)


def _class_map(seed: int = 0, shape: tuple[int, int, int] = (13, 40, 36)) -> np.ndarray:
    """Blobs of two classes (1, 2) of many sizes, several of them spanning many slices."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1.5, 2.5, 2.5))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[smooth > 0.08] = 1
    labels[smooth < -0.1] = 2
    return labels


def _reference(mask: np.ndarray, intensity: np.ndarray | None = None) -> list:
    return regionprops(skimage_label(mask, connectivity=1), intensity_image=intensity)


def test_components_agree_with_regionprops() -> None:
    labels = _class_map()
    probs = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    table = measure_objects(labels, VOXEL, classes={"mito": 1, "glia": 2}, probabilities=probs, chunk_z=64)
    for name, code in (("mito", 1), ("glia", 2)):
        rows = np.flatnonzero(table["class"] == name)
        props = _reference(labels == code, probs)
        assert len(rows) == len(props) > 3
        for row, prop in zip(rows, props, strict=True):
            assert table["label"][row] == prop.label
            assert table["voxel_count"][row] == prop.area
            assert table["volume_nm3"][row] == pytest.approx(prop.area * 30 * 4 * 5)
            centroid = [table[f"centroid_{a}"][row] for a in "zyx"]
            np.testing.assert_allclose(centroid, prop.centroid, rtol=1e-12)
            bbox = [table[f"bbox_{a}{e}"][row] for e in "01" for a in "zyx"]
            assert tuple(bbox) == prop.bbox
            assert table["mean_probability"][row] == pytest.approx(prop.intensity_mean, rel=1e-6)
            mesh = np.pad(prop.image, 1).astype(np.float32)
            verts, faces, _, _ = marching_cubes(mesh, 0.5, spacing=VOXEL)
            assert table["surface_area_nm2"][row] == pytest.approx(mesh_surface_area(verts, faces), rel=1e-9)


def test_ids_agree_with_regionprops_and_box_surface() -> None:
    ids = np.zeros((10, 30, 30), dtype=np.uint32)
    ids[2:8, 5:15, 4:20] = 70_000  # large ids are not an index
    ids[0:10, 20:25, 20:29] = 3
    ids[5, 0, 0] = 9
    table = measure_objects(ids, VOXEL, objects="ids", chunk_z=3)
    props = regionprops(ids.astype(np.int64))
    assert list(table["label"]) == [p.label for p in props] == [3, 9, 70_000]
    assert list(table["voxel_count"]) == [p.area for p in props]
    assert list(table["class"]) == ["object"] * 3
    # A box's marching-cubes surface is its faces with bevelled edges: within a few % of the box
    # area, with the anisotropic voxel size applied per axis.
    dz, dy, dx = (6 * 30, 10 * 4, 16 * 5)
    assert table["surface_area_nm2"][2] == pytest.approx(2 * (dz * dy + dz * dx + dy * dx), rel=0.08)


@pytest.mark.parametrize("connectivity", [1, 3])
def test_same_table_chunk_by_chunk(connectivity: int) -> None:
    labels = _class_map(seed=2, shape=(17, 32, 30))
    probs = np.random.default_rng(3).integers(0, 256, labels.shape).astype(np.uint8)
    whole = measure_objects(labels, VOXEL, probabilities=probs, chunk_z=17, connectivity=connectivity)
    assert len(whole["label"]) > 5 and whole["bbox_z1"].max() - whole["bbox_z0"].min() == 17
    spanning = (whole["bbox_z1"] - whole["bbox_z0"]) > 4
    assert spanning.sum() >= 2  # objects crossing several chunk boundaries below
    for chunk_z in (1, 2, 5):
        chunked = measure_objects(
            labels, VOXEL, probabilities=probs, chunk_z=chunk_z, connectivity=connectivity
        )
        assert list(chunked) == list(whole)
        for name, column in whole.items():
            if column.dtype == object or np.issubdtype(column.dtype, np.integer):
                assert list(chunked[name]) == list(column), name
            else:
                np.testing.assert_allclose(chunked[name], column, rtol=1e-9, err_msg=name)
    counts = (
        skimage_label(labels == 1, connectivity=connectivity).max()
        + skimage_label(labels == 2, connectivity=connectivity).max()
    )
    assert len(whole["label"]) == counts


def test_cli_measure_writes_csv_and_refuses_overwrite(tmp_path: Path) -> None:
    labels = _class_map(seed=4, shape=(6, 24, 24))
    with create_volume(tmp_path / "labels.zarr", labels.shape, np.uint8, voxel_size=VOXEL) as out:
        out[:] = labels
    out_csv = tmp_path / "objects.csv"
    args = [
        "measure",
        str(tmp_path / "labels.zarr"),
        "--out",
        str(out_csv),
        "--classes",
        "mito=1,glia=2",
        "--chunk-z",
        "2",
    ]
    assert main(args) == 0
    with out_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    expected = measure_objects(labels, VOXEL, classes={"mito": 1, "glia": 2})
    assert [r["class"] for r in rows] == list(expected["class"])
    assert [int(r["voxel_count"]) for r in rows] == list(expected["voxel_count"])
    np.testing.assert_allclose([float(r["surface_area_nm2"]) for r in rows], expected["surface_area_nm2"])
    before = out_csv.read_bytes()
    assert main(args) == 2  # exists: refused, untouched
    assert out_csv.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_write_csv_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    with pytest.raises(ValueError):
        write_csv({"a": np.arange(3), "b": np.arange(2)}, target)  # unequal columns fail midway
    assert not target.exists() and not list(tmp_path.iterdir())


def _instance_output(path: Path, *, complete: bool) -> np.ndarray:
    """A two-class `sam4em segment --output-type instances` output as segment records it: mito owns ids 1-3,
    glia 4-9 (ids are unique across classes)."""
    ids = np.zeros((4, 20, 20), dtype=np.uint32)
    ids[:2, 2:6, 2:6], ids[2:, 10:14, 3:7], ids[1:3, 12:18, 12:18] = 1, 3, 5
    with create_volume(path, ids.shape, np.uint32, voxel_size=VOXEL) as out:
        out[:] = ids
        out.attrs.update({
            RUN_RECORD: json.dumps({"output_type": "instances", "class_names": ["mito", "glia"], "block_size": 2}),
            COMPLETE: complete, BLOCKS_DONE: [0, 1] if complete else [0], INSTANCE_RANGES: [[1, 3], [4, 9]],
        })
    return ids


def test_measure_names_each_instance_s_class_from_the_output_s_id_ranges(tmp_path: Path) -> None:
    ids = _instance_output(tmp_path / "out.zarr", complete=True)
    table = measure_file(tmp_path / "out.zarr", tmp_path / "objects.csv")
    with table.open() as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((int(r["label"]), r["class"]) for r in rows) == [(1, "mito"), (3, "mito"), (5, "glia")]
    assert {int(r["label"]): int(r["voxel_count"]) for r in rows} == {v: int((ids == v).sum()) for v in (1, 3, 5)}


def test_measure_refuses_an_unfinished_output(tmp_path: Path) -> None:
    """Its missing z-blocks read as empty: the table would miss their objects without a word."""
    _instance_output(tmp_path / "part.zarr", complete=False)
    with pytest.raises(VolumeError, match=r"part.zarr: is an unfinished `sam4em segment` output \(1 of 2 z-blocks"):
        measure_file(tmp_path / "part.zarr", tmp_path / "objects.csv")
    assert not (tmp_path / "objects.csv").exists()
