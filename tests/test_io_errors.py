"""Volume inputs that used to end in a traceback or read silently wrong (issue 11): one line, or a warning."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from sam4em.cli import main
from sam4em.io import (
    MissingChunksWarning,
    VolumeError,
    create_volume,
    list_volumes,
    open_volume,
    resolve_path,
)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sam4em: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- symbolic links ---------------------------------------------------------------------------------
def test_symlink_loop_as_input_is_one_line_naming_the_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "stack.tif"
    os.symlink(loop.name, loop)  # points at itself
    for read in (lambda: open_volume(loop), lambda: resolve_path(loop)):
        with pytest.raises(VolumeError, match=r"stack\.tif: is a symbolic link that loops back on itself"):
            read()
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, np.zeros((2, 8, 8), np.uint8))
    commands = (
        ["evaluate", str(loop), str(gt), "--classes", "m=1"],
        ["segment", str(loop), str(tmp_path / "out.zarr"), "--model", "test-tiny"],
    )
    for command in commands:
        assert main(command) == 2
        assert "stack.tif: is a symbolic link that loops" in _one_error_line(capsys)
    assert not (tmp_path / "out.zarr").exists()


def test_dangling_symlink_names_its_missing_target(tmp_path: Path) -> None:
    link = tmp_path / "raw.tif"
    os.symlink(tmp_path / "moved.tif", link)
    with pytest.raises(VolumeError, match=r"raw\.tif: is a symbolic link to a missing file .*moved\.tif"):
        open_volume(link)


# -- TIFF -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1)])
def test_tiny_tiff_reads_as_a_volume(tmp_path: Path, shape: tuple[int, ...], capsys: pytest.CaptureFixture[str]) -> None:
    data = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint8).reshape(shape)
    tifffile.imwrite(tmp_path / "v.tif", data)  # tifffile names the axes of (1, 1, 1) 'XYX'
    with open_volume(tmp_path / "v.tif") as volume:
        assert volume.shape == (data.reshape(-1, *shape[-2:]).shape)
        np.testing.assert_array_equal(volume[:], data.reshape(volume.shape))
    if shape == (1, 1, 1):
        path = str(tmp_path / "v.tif")
        assert main(["evaluate", path, path, "--classes", "m=1", "--pred-classes", "m=1", "--no-progress"]) == 0
        assert "1.0000" in capsys.readouterr().out


# -- boolean images ---------------------------------------------------------------------------------
def test_bool_zarr_as_segment_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = zarr.create_array(tmp_path / "mask.zarr", shape=(2, 16, 16), dtype=bool, chunks=(1, 16, 16))
    mask[:] = True
    assert main(["segment", str(tmp_path / "mask.zarr"), str(tmp_path / "out.zarr"), "--model", "test-tiny"]) == 2
    line = _one_error_line(capsys)
    assert "mask.zarr: holds a boolean volume" in line and "uint8" in line
    assert not (tmp_path / "out.zarr").exists()


# -- Zarr chunks missing from the store -------------------------------------------------------------
def _zarr_with_a_lost_chunk(path: Path) -> np.ndarray:
    data = np.full((4, 8, 8), 7, np.uint8)
    array = zarr.create_array(path, shape=data.shape, dtype=np.uint8, chunks=(1, 8, 8), fill_value=0)
    array[:] = data
    shutil.rmtree(path / "c" / "2")  # slice 2's chunk, as an interrupted copy leaves it
    return data


def test_zarr_missing_chunk_warns_when_read(tmp_path: Path) -> None:
    _zarr_with_a_lost_chunk(tmp_path / "raw.zarr")
    with open_volume(tmp_path / "raw.zarr") as volume:
        dict(volume.attrs)  # metadata alone reads no chunk
        with pytest.warns(MissingChunksWarning, match=r"raw\.zarr: 1 of 4 chunks are missing .* fill value 0"):
            assert volume[2].max() == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            volume[0]  # warned once per volume


def test_zarr_missing_chunk_is_refused_for_labels_unless_allowed(tmp_path: Path) -> None:
    _zarr_with_a_lost_chunk(tmp_path / "labels.zarr")
    missing = r"labels\.zarr: 1 of 4 chunks are missing.*--allow-missing-chunks"
    with open_volume(tmp_path / "labels.zarr", allow_missing_chunks=False) as labels, pytest.raises(
        VolumeError, match=missing
    ):
        labels[0]


def test_zarr_written_by_sam4em_stores_every_chunk(tmp_path: Path) -> None:
    with create_volume(tmp_path / "zeros.zarr", (3, 8, 8), np.uint8) as volume:
        volume[:] = 0  # all fill value: zarr would skip these chunks by default
    with open_volume(tmp_path / "zeros.zarr", allow_missing_chunks=False) as volume, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert volume[:].sum() == 0


def test_list_volumes_names_the_arrays_of_a_container(tmp_path: Path) -> None:
    for key in ("raw", "seg/mito", "seg/glia"):
        create_volume(tmp_path / "c.zarr", (2, 4, 4), np.uint8, key=key).close()
    assert list_volumes(tmp_path / "c.zarr") == ["raw", "seg/glia", "seg/mito"]
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((2, 4, 4), np.uint8))
    assert list_volumes(tmp_path / "v.tif") == []


def test_training_refuses_labels_with_missing_chunks_unless_allowed(tmp_path: Path) -> None:
    from sam4em.data.class_mapping import ClassMapping
    from sam4em.data.samples import SliceCropDataset, VolumeSource

    with create_volume(tmp_path / "raw.zarr", (4, 8, 8), np.uint8) as raw:
        raw[:] = np.arange(4 * 8 * 8).reshape(4, 8, 8) % 200
    _zarr_with_a_lost_chunk(tmp_path / "labels.zarr")
    mapping = ClassMapping.parse("m=7")

    def first_crop(allow: bool) -> dict:
        source = VolumeSource(tmp_path / "raw.zarr", tmp_path / "labels.zarr", mapping, allow_missing_chunks=allow)
        return SliceCropDataset(source, crop_size=8, samples_per_epoch=1, p_fg=0.0)[0]

    with pytest.raises(VolumeError, match=r"labels\.zarr: 1 of 4 chunks are missing"):
        first_crop(False)
    with pytest.warns(MissingChunksWarning):
        assert first_crop(True)["image"].shape[-2:] == (8, 8)


def test_training_config_allow_missing_chunks_reaches_the_label_reader(tmp_path: Path) -> None:
    from sam4em.data.class_mapping import ClassMapping
    from sam4em.data.samples import SliceCropDataset
    from sam4em.training.config import config_from_dict
    from sam4em.training.trainer import volume_sources

    with create_volume(tmp_path / "raw.zarr", (4, 8, 8), np.uint8) as raw:
        raw[:] = np.arange(4 * 8 * 8).reshape(4, 8, 8) % 200
    _zarr_with_a_lost_chunk(tmp_path / "labels.zarr")
    volume = {"image": str(tmp_path / "raw.zarr"), "labels": str(tmp_path / "labels.zarr"), "val_fraction": 0.25}

    def first_training_crop(allow: bool) -> dict:
        config = config_from_dict({"classes": "m=7", "stages": [1], "volumes": [{**volume, "allow_missing_chunks": allow}]})
        with pytest.warns(MissingChunksWarning):  # reading the labels to check the class codes warns either way
            sources, _ = volume_sources(config, ClassMapping.parse("m=7"))
        return SliceCropDataset(sources[0], crop_size=8, samples_per_epoch=1, p_fg=0.0)[0]

    with pytest.raises(VolumeError, match=r"allow_missing_chunks: true"):
        first_training_crop(False)
    with pytest.warns(MissingChunksWarning):
        assert first_training_crop(True)["image"].shape[-2:] == (8, 8)
