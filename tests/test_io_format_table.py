"""The io format table: a format added with one module (tests/toy_npy_format.py) and one table entry
works everywhere formats are chosen: path detection, ``open_volume``, ``create_volume``, help texts,
and ``segment_to_file`` outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from sam4em.io import VolumeError, create_volume, list_volumes, open_volume, parse_path_key
from sam4em.io.formats import (
    FORMATS,
    VolumeFormat,
    format_for_path,
    format_for_suffix,
    has_scheme,
    output_suffixes_help,
    register_format,
    supported_suffixes_help,
)
from toy_npy_format import NPY_FORMAT

SHAPE = (3, 20, 24)
VOXEL_SIZE = (30.0, 4.0, 4.0)


@contextmanager
def registered(*formats: VolumeFormat) -> Iterator[None]:
    """The table with ``formats`` added, restored afterwards so no other test sees them."""
    saved = dict(FORMATS)
    try:
        for fmt in formats:
            register_format(fmt)
        yield
    finally:
        FORMATS.clear()
        FORMATS.update(saved)


@pytest.fixture
def npy_format() -> Iterator[VolumeFormat]:
    with registered(NPY_FORMAT):
        yield NPY_FORMAT


def _container_suffixes() -> set[str]:
    return {suffix for fmt in FORMATS.values() if fmt.container for suffix in fmt.suffixes}


def _error(action) -> str:
    with pytest.raises(VolumeError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_builtin_table_matches_the_formats_sam4em_reads() -> None:
    assert list(FORMATS) == ["tiff", "hdf5", "zarr", "precomputed", "n5", "mrc", "images"]
    assert _container_suffixes() == {".h5", ".hdf5", ".hdf", ".zarr", ".n5"}
    assert [format_for_suffix(s).name for s in (".tiff", ".rec", ".png")] == ["tiff", "mrc", "images"]
    assert format_for_suffix(".npy") is None
    assert [f.name for f in FORMATS.values() if f.multi_writer_safe] == ["zarr", "n5"]
    assert [f.name for f in FORMATS.values() if f.create is None] == ["precomputed"]
    assert [f.name for f in FORMATS.values() if f.ome_ngff] == ["zarr"]
    assert format_for_path("precomputed://anything").name == "precomputed"
    assert has_scheme("precomputed://anything") and not has_scheme("/data/precomputed/vol.zarr")


def test_help_texts_say_what_each_format_reads_and_writes() -> None:
    reading, writing = supported_suffixes_help(), supported_suffixes_help(writing=True)
    assert "folders of .png/.tif slices or PNG images (.png)" in reading
    assert "folders of .tif slices (no extension)" in writing and "PNG" not in writing  # folders get .tif slices
    assert "precomputed" in reading and "precomputed" not in writing
    # Segmentation outputs are reopened to write (resume): no slice folders, no read-only formats.
    outputs = output_suffixes_help()
    assert [f.name for f in FORMATS.values() if f.output_suffixes] == ["tiff", "hdf5", "zarr", "n5", "mrc"]
    assert "slices" not in outputs and "precomputed" not in outputs
    assert outputs.startswith("TIFF files (.tif/.tiff), HDF5 files (.h5/.hdf5/.hdf), Zarr stores (.zarr)")


def test_a_registered_toy_format_is_detected_and_listed(tmp_path: Path, npy_format: VolumeFormat) -> None:
    assert format_for_path(tmp_path / "vol.npy") is npy_format
    assert format_for_suffix(".npy") is npy_format and ".npy" not in _container_suffixes()
    assert "NumPy .npy files (.npy)" in supported_suffixes_help()
    assert "NumPy .npy files (.npy)" in supported_suffixes_help(writing=True)
    assert "NumPy .npy files (.npy)" in output_suffixes_help()
    # Not a container: the ':' of a missing file is part of its name, not a key.
    assert parse_path_key(str(tmp_path / "vol.npy:raw")) == (str(tmp_path / "vol.npy:raw"), None)


def test_a_container_toy_format_splits_path_keys(tmp_path: Path) -> None:
    boxes = dataclasses.replace(NPY_FORMAT, name="npybox", suffixes=(".npybox",), container=True)
    spec = str(tmp_path / "vol.npybox:raw")
    assert parse_path_key(spec) == (spec, None)
    with registered(boxes):
        assert ".npybox" in _container_suffixes()
        assert parse_path_key(spec) == (str(tmp_path / "vol.npybox"), "raw")
    assert ".npybox" not in _container_suffixes()


def test_toy_format_round_trips_through_create_and_open(tmp_path: Path, npy_format: VolumeFormat) -> None:
    path = tmp_path / "vol.npy"
    data = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    with create_volume(path, SHAPE, np.uint16, voxel_size=VOXEL_SIZE, attrs={"note": "toy"}) as out:
        out[:, :10] = data[:, :10]  # region by region
        out[:, 10:] = data[:, 10:]
    assert np.load(path).tolist() == data.tolist()  # really the toy module's file
    with open_volume(path) as volume:
        assert (volume.shape, volume.dtype, volume.voxel_size) == (SHAPE, np.uint16, VOXEL_SIZE)
        assert dict(volume.attrs) == {"note": "toy"}
        np.testing.assert_array_equal(volume[1, 5:9, ::3], data[1, 5:9, ::3])
        assert list_volumes(path) == []
    with open_volume(path, mode="r+") as volume:
        volume[0] = 7
        volume.attrs["done"] = True
    with open_volume(path) as volume:
        assert (volume[0] == 7).all() and volume.attrs["done"] is True


def test_toy_format_gets_the_tables_checks(tmp_path: Path, npy_format: VolumeFormat) -> None:
    path = tmp_path / "vol.npy"
    assert "NumPy .npy files hold one volume; drop the key 'raw'" in _error(
        lambda: create_volume(path, SHAPE, np.uint8, key="raw")
    )
    create_volume(path, SHAPE, np.uint8, attrs={"run": 1}).close()
    assert "vol.npy: already exists" in _error(lambda: create_volume(path, SHAPE, np.uint8))
    create_volume(path, (2, 4, 4), np.float32, overwrite=True).close()  # replaces file and sidecar
    with open_volume(path) as volume:
        assert (volume.shape, volume.dtype, dict(volume.attrs)) == ((2, 4, 4), np.float32, {})
    read_only = dataclasses.replace(NPY_FORMAT, name="npyro", suffixes=(".npyro",), writable=False, create=None)
    with registered(read_only):
        assert read_only.output_suffixes == () and ".npyro" not in output_suffixes_help()
        assert "cannot write format '.npyro'" in _error(lambda: create_volume(tmp_path / "o.npyro", SHAPE, "uint8"))
        np.save(tmp_path / "ro.npy", np.zeros(SHAPE, np.uint8))
        (tmp_path / "ro.npy").rename(tmp_path / "ro.npyro")
        assert "npyro volumes open read-only" in _error(lambda: open_volume(tmp_path / "ro.npyro", mode="r+"))


def test_unregistered_toy_suffix_is_unknown_again(tmp_path: Path) -> None:
    with registered(NPY_FORMAT):
        create_volume(tmp_path / "vol.npy", SHAPE, np.uint8).close()
    assert "vol.npy: unknown format '.npy'" in _error(lambda: open_volume(tmp_path / "vol.npy"))


def test_register_format_refuses_a_taken_name_or_suffix() -> None:
    with pytest.raises(ValueError, match=r"extension '\.tif' already belongs to 'tiff'"):
        register_format(dataclasses.replace(NPY_FORMAT, suffixes=(".tif",)))
    with pytest.raises(ValueError, match=r"'zarr' is already registered"):
        register_format(dataclasses.replace(NPY_FORMAT, name="zarr"))
    assert "npy" not in FORMATS


def small_raw_tif(folder: Path, *, seed: int) -> Path:
    """A random 2 x 32 x 32 uint8 stack with a voxel size, to segment into a toy format."""
    raw = folder / "raw.tif"
    with create_volume(raw, (2, 32, 32), np.uint8, voxel_size=VOXEL_SIZE) as out:
        out[:] = (np.random.default_rng(seed).random((2, 32, 32)) * 200).astype(np.uint8)
    return raw


def test_segment_to_file_writes_labels_to_a_toy_format(
    tmp_path: Path, npy_format: VolumeFormat, decisive_tiny_model
) -> None:
    from sam4em.inference.options import SegmentOptions
    from sam4em.inference.streaming import COMPLETE, segment_to_file

    raw = small_raw_tif(tmp_path, seed=0)
    model = decisive_tiny_model(("mito", "er"))
    options = SegmentOptions(output_type="labels", direction="forward", block_size=1)
    reference = segment_to_file(raw, tmp_path / "labels.tif", model, options)
    toy = segment_to_file(raw, tmp_path / "labels.npy", model, options)
    with open_volume(reference) as expected, open_volume(toy) as labels:
        assert (labels.shape, labels.dtype, labels.voxel_size) == ((2, 32, 32), np.uint8, VOXEL_SIZE)
        assert labels.attrs[COMPLETE] is True
        np.testing.assert_array_equal(labels[:], expected[:])


def test_sam4em_segment_writes_a_toy_format_from_the_shell(
    tmp_path: Path, npy_format: VolumeFormat, decisive_tiny_model
) -> None:
    """The CLI takes a registered format like a built-in one: no list of suffixes is written twice."""
    from sam4em.cli import main
    from sam4em.models import save_model

    raw = small_raw_tif(tmp_path, seed=1)
    run = save_model(decisive_tiny_model(("mito", "er")), tmp_path / "run")
    arguments = ["--model", str(run), "--output-type", "labels", "--direction", "forward", "--no-progress"]
    assert main(["segment", str(raw), str(tmp_path / "labels.tif"), *arguments]) == 0
    assert main(["segment", str(raw), str(tmp_path / "labels.npy"), *arguments]) == 0
    with open_volume(tmp_path / "labels.tif") as expected, open_volume(tmp_path / "labels.npy") as labels:
        assert labels.voxel_size == VOXEL_SIZE
        np.testing.assert_array_equal(labels[:], expected[:])
        assert expected[:].any()
