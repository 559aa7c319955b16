"""Streaming, resumable and distributed segmentation to files (`sam4em.inference.streaming`)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from sam4em.inference.options import SegmentOptions
from sam4em.inference.postprocess import probs_to_labels
from sam4em.inference.segment import segment_volume
from sam4em.inference.streaming import BLOCKS_DONE, COMPLETE, Interrupted, segment_to_file
from sam4em.io import VolumeError, create_volume, open_volume
from sam4em.models import SAM4EM, BaselineOptions, ModelInfo, SegmentationModel, save_model

SHAPE = (12, 80, 96)
VOXEL_SIZE = (40.0, 8.0, 8.0)
CLASSES = ("mito", "er")
#: Largest probability difference measured between z-blocks of 4 with overlap = memory capacity and
#: one continuous pass (4.5e-5 in float32 for this model), plus float16 storage rounding (2.4e-4).
BLOCK_TOLERANCE = 1e-3
FLOAT16_TOLERANCE = 1e-3
#: Workers run the same blocks with the same weights; only a different thread count could change rounding.
DASK_TOLERANCE = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(decisive_tiny_model) -> SAM4EM:
    """test-tiny with random weights whose mask logits are scaled up: raw, it predicts 0.5 +- 1e-5
    everywhere, too flat to tell directions apart after float16 storage."""
    return decisive_tiny_model(CLASSES)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 190, SHAPE[2])[None, None, :]
    return (rng.random(SHAPE) * 60 + ramp).astype(np.uint8)


@pytest.fixture(scope="module")
def raw_path(tmp_path_factory: pytest.TempPathFactory, volume: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("raw") / "raw.zarr"
    with create_volume(path, SHAPE, np.uint8, voxel_size=VOXEL_SIZE) as out:
        out[:] = volume
    return path


def read_probs(path: Path, names: tuple[str, ...] = CLASSES) -> np.ndarray:
    """(C, Z, Y, X) float32 from one array per class."""
    arrays = []
    for name in names:
        with open_volume(path, name) as volume:
            arrays.append(volume[:].astype(np.float32))
    return np.stack(arrays)


def attrs_of(path: Path, key: str | None) -> dict:
    with open_volume(path, key) as volume:
        return dict(volume.attrs)


@pytest.fixture(scope="module")
def blocked_both(tmp_path_factory: pytest.TempPathFactory, raw_path: Path, model: SAM4EM) -> np.ndarray:
    """The reference streaming run: both directions, blocks of 4, float16 probabilities."""
    out = segment_to_file(
        raw_path,
        tmp_path_factory.mktemp("ref") / "probs.zarr",
        model,
        SegmentOptions(block_size=4),
    )
    return read_probs(out)


@pytest.fixture(scope="module")
def blocked_forward(tmp_path_factory: pytest.TempPathFactory, raw_path: Path, model: SAM4EM) -> np.ndarray:
    """The cheaper reference for tests of storage, resuming and dask: forward, blocks of 4, float32."""
    out = tmp_path_factory.mktemp("ref") / "forward.zarr"
    return read_probs(
        segment_to_file(
            raw_path,
            out,
            model,
            SegmentOptions(direction="forward", block_size=4, probs_dtype="float32"),
        )
    )


def test_one_block_equals_segment_volume(tmp_path, raw_path, volume, model):
    expected = segment_volume(volume, model, direction="forward")
    exact = segment_to_file(
        raw_path,
        tmp_path / "f32.zarr",
        model,
        SegmentOptions(direction="forward", block_size=16, probs_dtype="float32"),
    )
    np.testing.assert_array_equal(read_probs(exact), expected)
    half = segment_to_file(
        raw_path,
        tmp_path / "f16.zarr",
        model,
        SegmentOptions(direction="forward", block_size=16),
    )
    np.testing.assert_allclose(read_probs(half), expected, atol=FLOAT16_TOLERANCE)


def test_blocks_approximate_one_pass(raw_path, volume, model, blocked_both):
    expected = segment_volume(volume, model, direction="both")
    np.testing.assert_allclose(blocked_both, expected, atol=BLOCK_TOLERANCE)


def test_both_is_mean_of_forward_and_backward(tmp_path, raw_path, model, blocked_both, blocked_forward):
    forward = blocked_forward
    backward = read_probs(
        segment_to_file(
            raw_path,
            tmp_path / "b.zarr",
            model,
            SegmentOptions(direction="backward", block_size=4),
        )
    )
    assert np.abs(forward - backward).max() > 10 * FLOAT16_TOLERANCE
    assert np.abs(blocked_both - forward).max() > FLOAT16_TOLERANCE
    np.testing.assert_allclose(blocked_both, (forward + backward) / 2, atol=FLOAT16_TOLERANCE)


class PixelModel(SegmentationModel):
    """A per-pixel stand-in for SAM4EM (a 1x1 convolution, no memory): all `SlicePredictor` uses."""

    def __init__(self, image_size: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        options = BaselineOptions(num_classes=int(weight.shape[0]), image_size=image_size)
        super().__init__(info=ModelInfo(base="pixel-test", build_options=options))
        self.conv = nn.Conv2d(1, self.num_classes, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(weight.view(-1, 1, 1, 1))
            self.conv.bias.copy_(bias)

    def new_memory_bank(self) -> None:
        return None

    def forward(self, images: torch.Tensor, bank: None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.conv(images))


def test_tiles_blend_without_seams(tmp_path):
    """A per-pixel model must give the same result in 64-pixel tiles as on whole slices: no seams."""
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (3, 150, 170), dtype=np.uint8)
    raw = tmp_path / "raw.h5"
    with create_volume(raw, stack.shape, np.uint8) as out:
        out[:] = stack
    weight, bias = torch.tensor([8.0, -6.0]), torch.tensor([-4.0, 3.0])
    whole = segment_volume(stack, PixelModel(256, weight, bias), direction="forward")
    tiled = segment_to_file(
        raw,
        tmp_path / "tiled.zarr",
        PixelModel(64, weight, bias),
        SegmentOptions(probs_dtype="float32", block_size=2),
    )
    assert whole.std() > 0.1
    np.testing.assert_allclose(read_probs(tiled, ("class1", "class2")), whole, atol=1e-5)


def test_resume_after_stop_equals_uninterrupted(tmp_path, raw_path, model, blocked_forward):
    out = tmp_path / "probs.zarr"
    options = {"direction": "forward", "block_size": 4, "probs_dtype": "float32"}
    calls = iter([False, True])  # one block, then stop
    with pytest.raises(Interrupted, match="--resume"):
        segment_to_file(raw_path, out, model, SegmentOptions(**options), stop=lambda: next(calls))
    partial = attrs_of(out, "mito")
    assert partial[COMPLETE] is False
    assert list(partial[BLOCKS_DONE]) == [0]
    with pytest.raises(VolumeError, match="already exists"):
        segment_to_file(raw_path, out, model, SegmentOptions(**options))
    with pytest.raises(VolumeError, match=r"another run \(different block_size: 4 there, 6 now\)"):
        segment_to_file(raw_path, out, model, SegmentOptions(resume=True, **{**options, "block_size": 6}))
    spill = tmp_path / "probs.zarr.partial-forward-1.zarr"  # what a run killed outright leaves (direction both)
    spill.mkdir()
    segment_to_file(raw_path, out, model, SegmentOptions(resume=True, **options))
    assert not spill.exists()
    finished = attrs_of(out, "er")
    assert finished[COMPLETE] is True
    assert list(finished[BLOCKS_DONE]) == [0, 1, 2]
    np.testing.assert_array_equal(read_probs(out), blocked_forward)


def test_dask_client_with_one_worker_thread(tmp_path, raw_path, model, blocked_forward):
    """The distributed code path, fast: an in-process worker with one thread runs one block at a time."""
    from distributed import LocalCluster

    from sam4em.inference.distributed import segment_to_file_dask

    out = tmp_path / "probs.zarr"
    options = {"direction": "forward", "block_size": 4, "probs_dtype": "float32"}
    recorded: list[list[int]] = []

    def stop() -> bool:  # checked as each block finishes: go on, then stop
        recorded.append(list(attrs_of(out, "mito")[BLOCKS_DONE]))
        return len(recorded) == 2

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(Interrupted):
            segment_to_file_dask(
                raw_path, out, model, SegmentOptions(**options), scheduler_address=cluster.scheduler_address, stop=stop
            )
        # Each block is recorded as it finishes, not only at the end: a client killed outright loses none.
        assert recorded == [[0], [0, 1]]
        assert attrs_of(out, "mito")[BLOCKS_DONE] == [0, 1]
        segment_to_file_dask(
            raw_path,
            out,
            model,
            SegmentOptions(resume=True, **options),
            scheduler_address=cluster.scheduler_address,
        )
    assert attrs_of(out, "er")[COMPLETE] is True
    np.testing.assert_array_equal(read_probs(out), blocked_forward)


def test_two_dask_workers_equal_one_process(tmp_path, raw_path, model, blocked_forward):
    """`--workers 2`: two worker processes loading the run folder. About 13 s on 2 idle cores (35 s on
    busy ones), nearly all of it the workers importing torch and transformers."""
    from sam4em.inference.distributed import segment_to_file_dask

    run_dir = save_model(model, tmp_path / "run")
    out = segment_to_file_dask(
        raw_path,
        tmp_path / "probs.zarr",
        run_dir,
        SegmentOptions(direction="forward", block_size=4, probs_dtype="float32"),
        workers=2,
    )
    assert attrs_of(out, "mito")[COMPLETE] is True
    np.testing.assert_allclose(read_probs(out), blocked_forward, atol=DASK_TOLERANCE)


@pytest.mark.parametrize("name", ["labels.zarr", "labels.h5", "labels.tif"])
def test_label_formats_reopen(tmp_path, raw_path, model, blocked_forward, name):
    out = segment_to_file(
        raw_path,
        tmp_path / name,
        model,
        SegmentOptions(output_type="labels", direction="forward", block_size=4),
    )
    key = None if name.endswith(".tif") else "labels"
    with open_volume(out, key) as labels:
        assert (labels.shape, labels.dtype, labels.voxel_size) == (SHAPE, np.uint8, VOXEL_SIZE)
        assert labels.attrs[COMPLETE]
        values = labels[:]
    assert set(np.unique(values)) == {0, 1, 2}
    np.testing.assert_array_equal(values, probs_to_labels(blocked_forward))


def test_probs_and_instances_reopen(tmp_path, raw_path, model):
    probs = segment_to_file(
        raw_path,
        tmp_path / "p.zarr",
        model,
        SegmentOptions(classes=["er"], probs_dtype="uint8", direction="forward"),
    )
    with open_volume(probs, "er") as er:
        assert (er.shape, er.dtype, er.voxel_size) == (SHAPE, np.uint8, VOXEL_SIZE)
    with pytest.raises(VolumeError):
        open_volume(probs, "mito")
    instances = segment_to_file(
        raw_path,
        tmp_path / "i.zarr",
        model,
        SegmentOptions(output_type="instances", min_size=5, direction="forward", block_size=4),
    )
    with open_volume(instances, "instances") as ids:
        assert (ids.shape, ids.dtype, ids.voxel_size) == (SHAPE, np.uint32, VOXEL_SIZE)
        assert ids[:].max() == ids.attrs["sam4em_instances"] > 0
    assert not (tmp_path / "i.zarr.partial-labels.zarr").exists()


def test_refusals(tmp_path, raw_path, model):
    with pytest.raises(VolumeError, match="is the input volume"):
        segment_to_file(raw_path, raw_path, model)
    with pytest.raises(VolumeError, match="is the input volume"):
        segment_to_file(f"{raw_path}:raw", f"{raw_path}:raw", model, SegmentOptions(output_type="labels"))
    with pytest.raises(VolumeError, match="is inside the input"):  # the input store would hold it
        segment_to_file(raw_path, raw_path / "seg.zarr", model, SegmentOptions(output_type="labels"))
    assert not (raw_path / "seg.zarr").exists()
    with pytest.raises(VolumeError, match="no extension"):
        segment_to_file(raw_path, tmp_path / "labels", model, SegmentOptions(output_type="labels"))
    with pytest.raises(VolumeError, match="container"):
        segment_to_file(raw_path, tmp_path / "probs.tif", model)
    with pytest.raises(ValueError, match="unknown class"):
        segment_to_file(raw_path, tmp_path / "p.zarr", model, SegmentOptions(classes=["glia"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_for_other_classes_names_them(tmp_path, raw_path, model):
    """Other classes look for other arrays; the refusal names the classes, not "another output type"."""
    out = tmp_path / "probs.zarr"
    options = {"direction": "forward", "block_size": 4, "classes": ["mito"]}
    calls = iter([False, True])
    with pytest.raises(Interrupted):
        segment_to_file(raw_path, out, model, SegmentOptions(**options), stop=lambda: next(calls))
    with pytest.raises(VolumeError, match=r"another run \(different class_names: \['mito'\] there, \['er'\] now\)"):
        segment_to_file(raw_path, out, model, SegmentOptions(resume=True, **{**options, "classes": ["er"]}))


def test_overwrite_swaps_only_when_complete(tmp_path, raw_path, model, blocked_forward):
    out = tmp_path / "labels.tif"
    with create_volume(out, (2, 3, 4), np.uint8, attrs={"note": "old"}) as old:
        old[:] = 7
    options = {"output_type": "labels", "direction": "forward", "block_size": 4, "overwrite": True}
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 4:  # the last slice of the first block: stop before the second
            stop.set()

    with pytest.raises(Interrupted):
        segment_to_file(raw_path, out, model, SegmentOptions(**options), progress=progress, stop=stop)
    with open_volume(out) as old:
        assert old.shape == (2, 3, 4) and (old[:] == 7).all() and dict(old.attrs) == {"note": "old"}
    with pytest.raises(VolumeError, match="--overwrite --resume"):
        segment_to_file(raw_path, out, model, SegmentOptions(resume=True, **{**options, "overwrite": False}))
    segment_to_file(raw_path, out, model, SegmentOptions(resume=True, **options))
    with open_volume(out) as new:
        assert new.shape == SHAPE and new.attrs[COMPLETE] and "note" not in new.attrs
        np.testing.assert_array_equal(new[:], probs_to_labels(blocked_forward))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels.tif.attrs.json"]
