"""Corrupt and truncated files: open_volume must raise VolumeError or return well-shaped data.

Each example copies a small valid volume, truncates it and/or flips random bytes, then
opens it and reads it. Any exception other than VolumeError is a bug.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam4em.io import VolumeError, create_volume, open_volume

SHAPE = (4, 16, 24)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Volumes whose (possibly corrupted) header claims more than this are read in part only.
FULL_READ_LIMIT = 16 * 2**20

Flips = list[tuple[float, int]]
mutations = st.tuples(
    st.one_of(st.none(), st.floats(0.0, 1.0)),  # keep this fraction of the bytes (None: no truncation)
    st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=8
    ),  # (where, xor)
)


def _data(dtype: str = "uint8") -> np.ndarray:
    return (np.random.default_rng(1).random(SHAPE) * 200).astype(dtype)


def _tiff_zlib(folder: Path) -> Path:
    tifffile.imwrite(folder / "v.tif", _data(), compression="zlib", photometric="minisblack")
    return folder / "v.tif"


def _tiff_raw(folder: Path) -> Path:
    with create_volume(folder / "v.tif", SHAPE, "uint16", voxel_size=(40, 4, 4)) as vol:
        vol[:] = _data("uint16")
    return folder / "v.tif"


def _png_folder(folder: Path) -> Path:
    (folder / "slices").mkdir()
    for z, image in enumerate(_data()):
        (folder / "slices" / f"{z}.png").write_bytes(imagecodecs.png_encode(image))
    return folder / "slices"


def _hdf5(folder: Path) -> Path:
    with h5py.File(folder / "v.h5", "w") as f:
        ds = f.create_dataset("raw", data=_data(), chunks=(1, 8, 8), compression="gzip")
        ds.attrs["resolution_nm"] = [40.0, 4.0, 4.0]
    return folder / "v.h5"


def _zarr(folder: Path) -> Path:
    with create_volume(folder / "v.zarr", SHAPE, "uint8", chunks=(2, 8, 8), voxel_size=(40, 4, 4)) as vol:
        vol[:] = _data()
    return folder / "v.zarr"


def _mrc(folder: Path) -> Path:
    with create_volume(folder / "v.mrc", SHAPE, "float32", voxel_size=(40, 4, 4)) as vol:
        vol[:] = _data("float32")
    return folder / "v.mrc"


def _mutate(file: Path, cut: float | None, flips: Flips) -> None:
    data = bytearray(file.read_bytes())
    if cut is not None:
        del data[int(len(data) * cut) :]
    for where, xor in flips:
        if data:
            data[int(where * len(data))] ^= xor
    file.write_bytes(bytes(data))


def _open_and_read(path: Path) -> None:
    """The property under test: a VolumeError, or data of the shape the volume reports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile, tifffile and NumPy warn about odd headers; not under test
        try:
            with open_volume(path) as vol:
                assert len(vol.shape) == 3 and vol.ndim == 3
                nbytes = int(np.prod(vol.shape, dtype=np.float64)) * vol.dtype.itemsize
                if nbytes <= FULL_READ_LIMIT:
                    assert vol[:].shape == vol.shape
                else:  # a corrupted header may claim terabytes: read a corner of the first and last slice
                    for z in (0, -1):
                        assert vol[z, :8, :8].shape == (min(8, vol.shape[1]), min(8, vol.shape[2]))
        except VolumeError as exc:
            assert "\n" not in str(exc)


def _fuzz(
    make: Callable[[Path], Path], pick: Callable[[Path], Path], cut: float | None, flips: Flips
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = make(Path(tmp))
        _mutate(pick(path), cut, flips)
        _open_and_read(path)


def _itself(path: Path) -> Path:
    return path


@FUZZ
@given(mutations)
def test_fuzz_tiff_compressed(mutation: tuple[float | None, Flips]) -> None:
    _fuzz(_tiff_zlib, _itself, *mutation)


@FUZZ
@given(mutations)
def test_fuzz_tiff_memory_mapped(mutation: tuple[float | None, Flips]) -> None:
    _fuzz(_tiff_raw, _itself, *mutation)


@FUZZ
@given(mutations, st.integers(0, SHAPE[0] - 1))
def test_fuzz_png_folder(mutation: tuple[float | None, Flips], z: int) -> None:
    _fuzz(_png_folder, lambda folder: folder / f"{z}.png", *mutation)


@FUZZ
@given(mutations)
def test_fuzz_hdf5(mutation: tuple[float | None, Flips]) -> None:
    _fuzz(_hdf5, _itself, *mutation)


@FUZZ
@given(mutations, st.sampled_from(["zarr.json", "0/zarr.json", "0/c/1/0/2"]))
def test_fuzz_zarr(mutation: tuple[float | None, Flips], part: str) -> None:
    """Corrupt the group metadata, the array metadata or one chunk."""
    _fuzz(_zarr, lambda store: store / part, *mutation)


@FUZZ
@given(mutations)
def test_fuzz_mrc(mutation: tuple[float | None, Flips]) -> None:
    _fuzz(_mrc, _itself, *mutation)


@pytest.mark.parametrize("make", [_tiff_zlib, _tiff_raw, _png_folder, _hdf5, _zarr, _mrc])
def test_fuzz_templates_are_valid(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    """The unmutated files read back intact, so the fuzzing starts from valid volumes."""
    with open_volume(make(tmp_path)) as vol:
        assert vol.shape == SHAPE
        np.testing.assert_array_equal(vol[:], _data(str(vol.dtype)))
    shutil.rmtree(tmp_path)
