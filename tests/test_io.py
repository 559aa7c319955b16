"""sam4em.io: round trips, lazy reads, real datasets, metadata conventions and error messages."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import imagecodecs
import mrcfile
import numpy as np
import pytest
import tensorstore as ts
import tifffile
import zarr

from sam4em.io import (
    MissingChunksWarning,
    Volume,
    VolumeError,
    WritableVolume,
    create_volume,
    open_volume,
    parse_path_key,
)
from sam4em.io.slices import natural_key

SHAPE = (6, 40, 30)
VOXEL = (50.0, 4.6, 4.2)
WRITE_TARGETS = ["vol.tif", "vol.h5", "vol.zarr", "vol.n5", "vol.mrc", "slices"]


def _ramp(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    """Random values that fit every dtype used here (0..250)."""
    return (np.random.default_rng(seed).random(shape) * 250).astype(dtype)


def _png(path: Path, image: np.ndarray) -> None:
    path.write_bytes(imagecodecs.png_encode(image))


def _voxel_size(path: Path | str) -> tuple[float, float, float] | None:
    with open_volume(path) as vol:
        return vol.voxel_size


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("name", WRITE_TARGETS)
def test_round_trip(tmp_path: Path, name: str, dtype: str) -> None:
    data = _ramp(SHAPE, dtype)
    path = tmp_path / name
    vol = create_volume(path, SHAPE, dtype, chunks=(2, 16, 16), voxel_size=VOXEL, attrs={"model": "unet"})
    assert isinstance(vol, WritableVolume)
    for z in range(0, SHAPE[0], 2):  # chunk by chunk, as a pipeline writes
        vol[z : z + 2] = data[z : z + 2]
    patch = (np.arange(4 * SHAPE[2]).reshape(4, SHAPE[2]) % 200).astype(dtype)
    vol[1, 3:7, ::-1] = patch  # a partial, reversed write
    data[1, 3:7, ::-1] = patch
    vol.close()

    with open_volume(path) as back:
        assert isinstance(back, Volume)
        assert (
            back.shape == SHAPE and back.dtype == np.dtype(dtype) and back.ndim == 3 and len(back) == SHAPE[0]
        )
        np.testing.assert_array_equal(np.asarray(back), data)
        assert back.voxel_size == pytest.approx(VOXEL)
        assert back.attrs["model"] == "unet"
        assert back.path == path


@pytest.mark.parametrize("dtype", ["int8", "int32", "float64", "bool"])
def test_round_trip_other_dtypes(tmp_path: Path, dtype: str) -> None:
    """Non-ImageJ dtypes go to OME-TIFF; zarr and HDF5 store anything numeric."""
    data = _ramp(SHAPE, dtype)
    for name in ("vol.zarr", "vol.h5") if dtype == "bool" else ("vol.tif", "vol.zarr", "vol.h5"):
        with create_volume(tmp_path / name, SHAPE, dtype, voxel_size=VOXEL) as vol:
            vol[...] = data
        with open_volume(tmp_path / name) as back:
            assert back.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(back[:], data)
            assert back.voxel_size == pytest.approx(VOXEL)


def test_no_voxel_size_reads_as_none(tmp_path: Path) -> None:
    for name in WRITE_TARGETS:
        create_volume(tmp_path / name, SHAPE, "uint8").close()
        with open_volume(tmp_path / name) as back:
            assert back.voxel_size is None, name


def test_indexing_matches_numpy(tmp_path: Path) -> None:
    data = _ramp(SHAPE, "uint16")
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib", photometric="minisblack")
    with create_volume(tmp_path / "vol.h5", SHAPE, "uint16") as vol:
        vol[:] = data
    indices: list[Any] = [
        0, -1, 3, (2, 5), (2, 5, 7), (-1, -2, -3), slice(1, 4), (slice(None, None, -1), 3),
        (slice(None, None, 2), slice(5, 30, 7), slice(None, None, -3)), (..., 4), (1, ...), (..., 2, 3),
        (slice(4, 1, -2), slice(-5, None), slice(None, 3)), (slice(3, 3), 0), (slice(10, 20),), (),
    ]  # fmt: skip
    for name in ("zlib.tif", "vol.h5"):
        with open_volume(tmp_path / name) as vol:
            for index in indices:
                np.testing.assert_array_equal(vol[index], data[index], err_msg=f"{name} {index}")
            with pytest.raises(IndexError):
                vol[SHAPE[0]]
            with pytest.raises(IndexError):
                vol[0, 0, 0, 0]
            with pytest.raises(TypeError, match="ints, slices"):
                vol[[0, 1]]


def test_two_d_inputs_are_one_slice_stacks(tmp_path: Path) -> None:
    image = _ramp((20, 24), "uint8")
    tifffile.imwrite(tmp_path / "one.tif", image)
    _png(tmp_path / "one.png", image)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["image"] = image
    for name in ("one.tif", "one.png", "one.h5"):
        with open_volume(tmp_path / name) as vol:
            assert vol.shape == (1, 20, 24)
            np.testing.assert_array_equal(vol[0], image)
            np.testing.assert_array_equal(vol[:, 2:5], image[None, 2:5])


def test_rgb_reads_as_luminance_with_one_warning(tmp_path: Path) -> None:
    gray = _ramp((3, 16, 20), "uint8")
    rgb = np.stack([gray, gray, gray], axis=-1)
    rgb[0, 0, 0] = (255, 0, 0)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="zlib")
    (tmp_path / "rgb").mkdir()
    for z in range(3):
        _png(tmp_path / "rgb" / f"{z}.png", rgb[z])
    expected = gray.copy()
    expected[0, 0, 0] = round(0.299 * 255)
    for name in ("rgb.tif", "rgb"):
        with pytest.warns(UserWarning, match="luminance") as caught, open_volume(tmp_path / name) as vol:
            data = vol[:]
            vol[1]
        assert len(caught) == 1
        assert vol.shape == (3, 16, 20)
        np.testing.assert_array_equal(data, expected)


def test_read_mode_never_writes(tmp_path: Path) -> None:
    data = _ramp(SHAPE, "uint8")
    for name in WRITE_TARGETS:
        with create_volume(tmp_path / name, SHAPE, "uint8", voxel_size=VOXEL) as vol:
            vol[:] = data
        before = _digest(tmp_path / name)
        with open_volume(tmp_path / name) as vol:
            vol[:]
            with pytest.raises(VolumeError, match="read-only"):
                vol[0] = 1
        assert _digest(tmp_path / name) == before, name


@pytest.mark.parametrize("name", ["vol.tif", "vol.h5", "vol.zarr", "vol.n5", "vol.mrc"])
def test_update_in_place(tmp_path: Path, name: str) -> None:
    create_volume(tmp_path / name, SHAPE, "uint8").close()
    with open_volume(tmp_path / name, mode="r+") as vol:
        vol[2, 1:3] = 9
    # Zarr does not store the chunks never written: reading them warns (they read as the fill value).
    unwritten = pytest.warns(MissingChunksWarning) if name == "vol.zarr" else contextlib.nullcontext()
    with open_volume(tmp_path / name) as vol, unwritten:
        assert vol[2, 1:3].min() == 9 and vol[:].sum() == 9 * 2 * SHAPE[2]


def test_attrs_are_persisted_on_write(tmp_path: Path) -> None:
    for name in WRITE_TARGETS:
        with create_volume(tmp_path / name, SHAPE, "uint8") as vol:
            vol.attrs["threshold"] = 0.5
            vol.attrs.update({"classes": "mito"})
        with open_volume(tmp_path / name) as back:
            assert back.attrs["threshold"] == 0.5 and back.attrs["classes"] == "mito", name


def test_containers_take_more_keys(tmp_path: Path) -> None:
    for name in ("vol.h5", "vol.zarr", "vol.n5"):
        path = tmp_path / name
        with create_volume(path, SHAPE, "uint8", key="raw", voxel_size=VOXEL) as vol:
            vol[:] = 1
        with create_volume(path, SHAPE, "uint16", key="pred/mito") as vol:
            vol[:] = 2
        with pytest.raises(VolumeError, match=r"already holds .raw.*overwrite"):
            create_volume(path, SHAPE, "uint8", key="raw")
        with create_volume(path, SHAPE, "uint8", key="raw", overwrite=True) as vol:
            vol[:] = 3
        with open_volume(path, key="raw") as vol, open_volume(f"{path}:pred/mito") as pred:
            assert vol[0, 0, 0] == 3 and pred.dtype == np.uint16
        with pytest.raises(VolumeError, match=f"{name}: holds several"):
            open_volume(path)


def test_overwrite(tmp_path: Path) -> None:
    for name in WRITE_TARGETS:
        path = tmp_path / name
        create_volume(path, SHAPE, "uint8").close()
        with pytest.raises(VolumeError, match=f"{name}: already exists.*overwrite=True"):
            create_volume(path, SHAPE, "uint8")
        with create_volume(path, (2, 8, 8), "uint16", overwrite=True) as vol:
            vol[:] = 5
        with open_volume(path) as vol:
            assert vol.shape == (2, 8, 8)


def test_folder_output_layout_and_natural_order(tmp_path: Path) -> None:
    with create_volume(tmp_path / "out", (12, 8, 9), "uint8") as vol:
        vol[:] = np.arange(12, dtype=np.uint8)[:, None, None]
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:3] == ["0000.tif", "0001.tif", "0002.tif"]
    (tmp_path / "png").mkdir()
    for z in range(12):  # unpadded names sort wrongly as text
        _png(tmp_path / "png" / f"{z}.png", np.full((8, 9), z, np.uint8))
    for name in ("out", "png"):
        with open_volume(tmp_path / name) as vol:
            np.testing.assert_array_equal(vol[:, 0, 0], np.arange(12))
    assert sorted(["10.png", "2.png", "1.png", "b3.png", "b20.png"], key=natural_key) == [
        "1.png", "2.png", "10.png", "b3.png", "b20.png",
    ]  # fmt: skip


# --- lazy reads -----------------------------------------------------------------------------


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _measure(read: Callable[[], np.ndarray]) -> tuple[int, int]:
    """(bytes read through syscalls, peak Python-tracked memory) of one call."""
    before = _rchar()
    tracemalloc.start()
    read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return _rchar() - before, peak


def test_reading_one_slice_reads_only_that_slice(tmp_path: Path) -> None:
    """200 MB volumes: one 1 MB slice must cost about 1 MB of reading and of memory.

    Only slices 100-149 are written (the rest stay sparse or unallocated) to keep the test
    fast; a reader that loaded the whole volume would still allocate 200 MB, and one that
    streamed the whole file would still read 50 MB.
    """
    shape, mb = (200, 1000, 1000), 2**20
    block = np.broadcast_to(np.arange(100, 150, dtype=np.uint8)[:, None, None], (50, *shape[1:]))
    with create_volume(tmp_path / "big.tif", shape, "uint8") as vol:  # uncompressed: memory-mapped
        vol[100:150] = block
    with h5py.File(tmp_path / "big.h5", "w") as f:  # uncompressed chunks, so the file holds 50 MB
        f.create_dataset("raw", shape=shape, dtype="uint8", chunks=(1, 500, 500))[100:150] = block
    big = zarr.create_array(
        tmp_path / "big.zarr", shape=shape, dtype="uint8", chunks=(1, 500, 500), compressors=None
    )
    big[100:150] = block
    for name in ("big.tif", "big.h5", "big.zarr"):
        unwritten = pytest.warns(MissingChunksWarning) if name == "big.zarr" else contextlib.nullcontext()
        with open_volume(tmp_path / name) as vol, unwritten:
            read_bytes, peak = _measure(lambda vol=vol: vol[123])
            assert vol[123].mean() == 123 and vol.shape == shape
        assert peak < 8 * mb, (name, peak)
        assert read_bytes < 8 * mb, (name, read_bytes)


def test_compressed_tiff_decodes_only_the_pages_read(tmp_path: Path) -> None:
    data = np.zeros((100, 1000, 1000), np.uint8)
    data[:, ::7] = np.arange(100, dtype=np.uint8)[:, None, None]
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib", photometric="minisblack")
    with open_volume(tmp_path / "zlib.tif") as vol:
        _, peak = _measure(lambda: vol[42])
        np.testing.assert_array_equal(vol[42], data[42])
    assert peak < 8 * 2**20


# --- the shared real datasets ---------------------------------------------------------------


@pytest.mark.data
def test_isbi2012_folder_in_numeric_order(data_dir: Path) -> None:
    folder = data_dir / "isbi2012" / "train" / "image"
    with open_volume(folder) as vol:
        assert vol.shape == (30, 512, 512) and vol.dtype == np.uint8
        expected = imagecodecs.png_decode((folder / "2.png").read_bytes())
        np.testing.assert_array_equal(vol[2], expected)
        np.testing.assert_array_equal(vol[10], imagecodecs.png_decode((folder / "10.png").read_bytes()))
    with open_volume(data_dir / "isbi2012" / "train" / "label") as labels:
        assert labels.shape == (30, 512, 512)


@pytest.mark.data
@pytest.mark.parametrize("name", ["train_image", "train_label", "test_image", "test_label"])
def test_lucchi_pp_tiffs(data_dir: Path, name: str) -> None:
    with open_volume(data_dir / "lucchi_pp" / f"{name}.tif") as vol:
        assert vol.shape == (165, 768, 1024) and vol.dtype == np.uint8
        page = vol[80]  # one zlib page, decoded alone
        assert page.shape == (768, 1024)
        if "label" in name:
            assert set(np.unique(page)) <= {0, 255}


@pytest.mark.data
def test_vnc_hdf5(data_dir: Path) -> None:
    path = data_dir / "vnc" / "stack1_z00-09.h5"
    for key in ("raw", "labels"):
        with open_volume(path, key=key) as vol:
            assert vol.shape == (10, 1024, 1024) and vol.dtype == np.uint8
            assert vol.voxel_size == pytest.approx((50.0, 4.6, 4.6))
            assert vol[3, :64, :64].shape == (64, 64)
    with open_volume(f"{path}:raw") as vol:
        assert vol.key == "raw"


# --- metadata conventions of other writers --------------------------------------------------


def test_hdf5_voxel_size_conventions(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["fiji"] = np.zeros((2, 3, 4), np.uint8)
        f["fiji"].attrs["element_size_um"] = [0.05, 0.004, 0.004]
        group = f.create_group("cremi")
        group.attrs["resolution"] = [40, 4, 4]
        group["raw"] = np.zeros((2, 3, 4), np.uint8)
    assert _voxel_size(f"{tmp_path / 'a.h5'}:fiji") == pytest.approx((50, 4, 4))
    assert _voxel_size(f"{tmp_path / 'a.h5'}:cremi/raw") == pytest.approx((40, 4, 4))


def test_zarr_v2_and_ome_zarr_from_other_writers(tmp_path: Path) -> None:
    data = _ramp((3, 10, 12), "uint16")
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, dtype="uint16", zarr_format=2)
    v2[:] = data
    v2.attrs["resolution"] = [30, 5, 5]
    with open_volume(tmp_path / "v2.zarr") as vol:
        np.testing.assert_array_equal(vol[:], data)
        assert vol.voxel_size == (30, 5, 5)
    # OME-Zarr 0.4 (zarr v2), 5D t,c,z,y,x in micrometres with a pyramid: scale 0 is read.
    root = zarr.open_group(tmp_path / "ome.zarr", mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 1, *data.shape), dtype="uint16")[:] = data[None, None]
    root.create_array("1", shape=(1, 1, 3, 5, 6), dtype="uint16")
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"
    ]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.03, s, s]}]}
        for i, s in enumerate((0.005, 0.01))
    ]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    with open_volume(tmp_path / "ome.zarr") as vol:
        assert vol.shape == data.shape
        np.testing.assert_array_equal(vol[1], data[1])
        assert vol.voxel_size == pytest.approx((30, 5, 5))


def test_ome_zarr_written_by_us(tmp_path: Path) -> None:
    with create_volume(tmp_path / "v.zarr", SHAPE, "uint8", voxel_size=VOXEL):
        pass
    meta = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    multiscale = meta["multiscales"][0]
    assert meta["version"] == "0.5"
    assert [(a["name"], a["unit"]) for a in multiscale["axes"]] == [(a, "nanometer") for a in "zyx"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == list(VOXEL)
    assert zarr.open_array(tmp_path / "v.zarr" / "0", mode="r").metadata.zarr_format == 3


def test_n5_from_other_writers_is_x_first(tmp_path: Path) -> None:
    data = _ramp((4, 6, 8), "uint8")
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(tmp_path / "a.n5" / "raw")},
            "metadata": {
                "dimensions": [8, 6, 4],
                "blockSize": [8, 6, 1],
                "dataType": "uint8",
                "compression": {"type": "raw"},
            },
        },
        create=True,
    ).result()
    store.write(data.T).result()  # the N5 array is indexed (x, y, z)
    attributes = tmp_path / "a.n5" / "raw" / "attributes.json"
    meta = json.loads(attributes.read_text())
    meta["pixelResolution"] = {"dimensions": [0.004, 0.005, 0.04], "unit": "um"}
    attributes.write_text(json.dumps(meta))
    with open_volume(tmp_path / "a.n5") as vol:
        assert vol.shape == (4, 6, 8) and vol.key == "raw"
        np.testing.assert_array_equal(vol[:], data)
        assert vol.voxel_size == pytest.approx((40, 5, 4))
    with create_volume(tmp_path / "b.n5", (4, 6, 8), "uint8", chunks=(1, 6, 8), voxel_size=(40, 5, 4)):
        pass
    written = json.loads((tmp_path / "b.n5" / "attributes.json").read_text())
    assert written["dimensions"] == [8, 6, 4] and written["resolution"] == [4, 5, 40]


def test_neuroglancer_precomputed(tmp_path: Path) -> None:
    data = _ramp((5, 6, 7), "uint8")
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(tmp_path / "ng")},
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {
            "size": [7, 6, 5],
            "resolution": [4, 4, 40],
            "encoding": "raw",
            "voxel_offset": [3, 2, 1],
        },
    }
    store = ts.open(spec, create=True).result()
    store[ts.d["channel"][0]].translate_to[0].write(data.T).result()
    for path in (tmp_path / "ng", f"precomputed://{tmp_path / 'ng'}"):
        with open_volume(path) as vol:
            assert vol.shape == (5, 6, 7) and vol.voxel_size == (40, 4, 4)
            np.testing.assert_array_equal(vol[:], data)


def test_imagej_and_ome_tiff_from_other_writers(tmp_path: Path) -> None:
    data = _ramp((3, 8, 9), "uint8")
    ij_meta = {"spacing": 0.05, "unit": "micron"}
    gray = {"photometric": "minisblack"}
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(250.0, 200.0),
        metadata=ij_meta,
        compression="zlib",
        **gray,
    )
    assert _voxel_size(tmp_path / "ij.tif") == pytest.approx((50, 5, 4))
    ome_meta = {"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.005, "PhysicalSizeZ": 0.05}
    tifffile.imwrite(tmp_path / "x.ome.tif", data, ome=True, metadata=ome_meta, **gray)
    assert _voxel_size(tmp_path / "x.ome.tif") == pytest.approx((50, 5, 4))
    tifffile.imwrite(tmp_path / "plain.tif", data, resolution=(72, 72), **gray)
    assert _voxel_size(tmp_path / "plain.tif") is None


def test_mrc_imod_unsigned_bytes_and_angstrom(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "signed.mrc", data=np.array([[[-3, 5]]], np.int8)) as mrc:
        mrc.voxel_size = (10.0, 20.0, 30.0)
    with open_volume(tmp_path / "signed.mrc") as vol:
        assert vol.dtype == np.int8 and vol[0, 0, 0] == -3
        assert vol.voxel_size == pytest.approx((3.0, 2.0, 1.0))
    with create_volume(tmp_path / "bytes.mrc", (1, 1, 2), "uint8") as vol:
        vol[:] = [[[200, 5]]]
    with open_volume(tmp_path / "bytes.mrc") as vol:
        assert vol.dtype == np.uint8 and vol[0, 0, 0] == 200
    with mrcfile.open(tmp_path / "bytes.mrc") as mrc:
        assert mrc.header.dmax == 200


# --- path:key parsing -----------------------------------------------------------------------


def test_parse_path_key(tmp_path: Path) -> None:
    existing = tmp_path / "vol.tif"
    existing.touch()
    odd = tmp_path / "a:b.tif"
    odd.touch()
    assert parse_path_key("vol.h5:raw") == ("vol.h5", "raw")
    assert parse_path_key("data/vol.zarr:labels/mito") == ("data/vol.zarr", "labels/mito")
    assert parse_path_key("vol.n5/:setup0") == ("vol.n5/", "setup0")
    assert parse_path_key("vol.h5") == ("vol.h5", None)
    assert parse_path_key("vol.h5:") == ("vol.h5:", None)
    assert parse_path_key(r"C:\data\vol.tif") == (r"C:\data\vol.tif", None)
    assert parse_path_key("C:/data/vol.tif") == ("C:/data/vol.tif", None)
    assert parse_path_key(r"C:\data\vol.h5:raw") == (r"C:\data\vol.h5", "raw")
    assert parse_path_key("C:") == ("C:", None)
    assert parse_path_key("missing.tif:0") == ("missing.tif:0", None)
    assert parse_path_key(f"{existing}:0") == (str(existing), "0")
    assert parse_path_key(str(odd)) == (str(odd), None)
    assert parse_path_key("precomputed://gs:/x") == ("precomputed://gs:/x", None)


# --- errors: one line, naming the file, the problem and the fix ------------------------------


def _error(call: Callable[[], Any]) -> str:
    with pytest.raises(VolumeError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_missing_path(tmp_path: Path) -> None:
    message = _error(lambda: open_volume(tmp_path / "missing.tif"))
    assert message == f"{tmp_path / 'missing.tif'}: no such file or directory (check the path)"


def test_error_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "vol.xyz").write_bytes(b"x")
    message = _error(lambda: open_volume(tmp_path / "vol.xyz"))
    assert "vol.xyz: unknown format '.xyz'" in message and ".tif" in message and ".zarr" in message
    assert "cannot write format '.xyz'" in _error(lambda: create_volume(tmp_path / "o.xyz", SHAPE, "uint8"))


def test_error_hdf5_missing_key_and_several_datasets(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f["image"] = np.zeros((2, 3, 4), np.uint8)
        f["labels"] = np.zeros((2, 3, 4), np.uint8)
    message = _error(lambda: open_volume(tmp_path / "vol.h5", key="raw"))
    assert message.endswith(
        "vol.h5: no dataset 'raw' (available: 'image', 'labels'); name one as path.h5:KEY"
    )
    assert "vol.h5: holds several datasets ('image', 'labels')" in _error(
        lambda: open_volume(tmp_path / "vol.h5")
    )
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["table"] = np.zeros(5)
    assert "empty.h5: holds no 2D or 3D dataset (datasets: 'table')" in _error(
        lambda: open_volume(tmp_path / "empty.h5")
    )


def test_error_empty_folder_and_mismatched_slices(tmp_path: Path) -> None:
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "notes.txt").write_text("x")
    assert "slices/: folder holds no .png/.tif images" in _error(lambda: open_volume(tmp_path / "slices"))
    for z in range(8):
        _png(tmp_path / "slices" / f"{z}.png", np.zeros((100, 90 if z == 7 else 100), np.uint8))
    message = _error(lambda: open_volume(tmp_path / "slices"))
    assert message.endswith(
        "slices/: slice 7.png has shape (100, 90) but 0.png has (100, 100); all slices must share one shape"
    )
    _png(tmp_path / "slices" / "7.png", np.zeros((100, 100), np.uint16))
    assert "slice 7.png has dtype uint16 but 0.png has uint8" in _error(
        lambda: open_volume(tmp_path / "slices")[:]
    )


def test_error_unsupported_dtype(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((2, 4, 4), np.complex64), photometric="minisblack")
    assert _error(lambda: open_volume(tmp_path / "x.tif")).endswith(
        "x.tif: unsupported dtype complex64 (use integer or float images)"
    )
    assert "unsupported dtype complex64" in _error(
        lambda: create_volume(tmp_path / "y.h5", SHAPE, np.complex64)
    )
    assert "MRC cannot store dtype int32" in _error(lambda: create_volume(tmp_path / "y.mrc", SHAPE, "int32"))
    assert "N5 cannot store dtype bool" in _error(lambda: create_volume(tmp_path / "y.n5", SHAPE, "bool"))
    assert "TIFF cannot store dtype bool" in _error(lambda: create_volume(tmp_path / "y.tif", SHAPE, "bool"))


def test_error_corrupt_or_truncated(tmp_path: Path) -> None:
    data = _ramp((4, 32, 32), "uint8")
    tifffile.imwrite(tmp_path / "x.tif", data, compression="zlib", photometric="minisblack")
    raw = (tmp_path / "x.tif").read_bytes()
    (tmp_path / "x.tif").write_bytes(raw[: len(raw) // 2])
    message = _error(lambda: open_volume(tmp_path / "x.tif")[:])
    assert "x.tif: cannot read file (corrupt or truncated: " in message
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    assert "junk.h5: cannot read file (corrupt or truncated: " in _error(
        lambda: open_volume(tmp_path / "junk.h5")
    )
    with create_volume(tmp_path / "v.mrc", (4, 32, 32), "float32") as vol:
        vol[:] = 1
    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "v.mrc").write_bytes(raw[:2000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's permissive mode warns first
        assert "v.mrc: cannot read file (corrupt or truncated" in _error(
            lambda: open_volume(tmp_path / "v.mrc")
        )


def test_error_keys_modes_and_arguments(tmp_path: Path) -> None:
    create_volume(tmp_path / "x.tif", SHAPE, "uint8").close()
    assert "x.tif: TIFF files hold one volume; drop the key 'raw'" in _error(
        lambda: open_volume(tmp_path / "x.tif", "raw")
    )
    assert "unknown mode 'w'" in _error(lambda: open_volume(tmp_path / "x.tif", mode="w"))
    assert "shape must be 3 positive integers" in _error(
        lambda: create_volume(tmp_path / "y.h5", (0, 4, 4), "uint8")
    )
    assert "voxel_size must be 3 positive numbers" in _error(
        lambda: create_volume(tmp_path / "y.h5", SHAPE, "uint8", voxel_size=(1, 2))
    )
    create_volume(tmp_path / "v.zarr", SHAPE, "uint8", key="raw").close()
    create_volume(tmp_path / "v.zarr", SHAPE, "uint8", key="labels").close()
    assert "v.zarr: no array 'pred' (available: 'labels', 'raw'); name one as path.zarr:KEY" in _error(
        lambda: open_volume(tmp_path / "v.zarr", "pred")
    )
    assert "v.zarr: holds several arrays ('labels', 'raw')" in _error(
        lambda: open_volume(tmp_path / "v.zarr")
    )
    create_volume(tmp_path / "v.n5", SHAPE, "uint8", key="raw").close()
    assert "v.n5: no dataset 'pred' (available: 'raw')" in _error(
        lambda: open_volume(tmp_path / "v.n5", "pred")
    )
    vol = open_volume(tmp_path / "x.tif")
    vol.close()
    assert "volume is closed" in _error(lambda: vol[0])


def test_error_refuses_to_delete_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_text("precious")
    message = _error(lambda: create_volume(tmp_path / "out", SHAPE, "uint8", overwrite=True))
    assert "holds files other than slices (thesis.docx); refusing to delete it" in message
    assert (tmp_path / "out" / "thesis.docx").exists()
