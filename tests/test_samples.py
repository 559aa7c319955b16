"""Crop and clip datasets: shapes, foreground-aware sampling, determinism, workers, z-splits."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sam4em.data.augment import AugmentConfig
from sam4em.data.class_mapping import ClassMapping
from sam4em.data.normalize import percentile_normalize, volume_percentiles
from sam4em.data.samples import ClipDataset, SliceCropDataset, VolumeSource
from sam4em.data.splits import dataset_sources, split_z

SHAPE = (12, 96, 96)
MAPPING = ClassMapping.parse("mito=1,synapse=2,ignore=9")


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (12, 96, 96) HDF5 volume: noise image; labels with a big mito block, one small synapse
    blob (3×3 in slices 5-7) and an ignored strip."""
    path = tmp_path_factory.mktemp("volume") / "tiny.h5"
    rng = np.random.default_rng(0)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 10:40, 10:40] = 1
    labels[5:8, 70:73, 60:63] = 2
    labels[:, 90:, :] = 9
    with h5py.File(path, "w") as handle:
        handle.create_dataset("raw", data=rng.integers(0, 256, SHAPE, dtype=np.uint8), chunks=(1, 48, 48))
        handle.create_dataset("labels", data=labels, chunks=(1, 48, 48))
    return path


def _source(path: Path, z_range: tuple[int, int] | None = None) -> VolumeSource:
    return VolumeSource(path, path, MAPPING, image_key="raw", label_key="labels", z_range=z_range)


def test_slice_crop_shapes_and_dtypes(volume_file: Path) -> None:
    dataset = SliceCropDataset(
        _source(volume_file), crop_size=32, samples_per_epoch=5, augment=AugmentConfig()
    )
    assert len(dataset) == 5 and dataset.class_names == ("mito", "synapse")
    item = dataset[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["targets"].shape == (2, 32, 32) and item["targets"].dtype == torch.float32
    assert item["valid"].shape == (32, 32) and item["valid"].dtype == torch.bool
    assert 0 <= item["z"] < SHAPE[0] and item["source"] == 0
    assert set(torch.unique(item["targets"]).tolist()) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        dataset[5]


def test_clip_shapes_and_z_range(volume_file: Path) -> None:
    dataset = ClipDataset(
        _source(volume_file, (2, 9)), clip_length=4, crop_size=(24, 40), samples_per_epoch=20
    )
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (4, 1, 24, 40)
        assert item["targets"].shape == (4, 2, 24, 40)
        assert item["valid"].shape == (4, 24, 40)
        z = item["z"].tolist()
        assert z == list(range(z[0], z[0] + 4)) and z[0] >= 2 and z[-1] < 9
    reversing = ClipDataset(
        _source(volume_file),
        clip_length=3,
        crop_size=16,
        samples_per_epoch=30,
        augment=AugmentConfig.only("reverse"),
    )
    z = reversing[0]["z"].tolist()
    assert z == list(range(z[0], z[0] - 3, -1))
    with pytest.raises(ValueError, match="shorter than clip_length"):
        ClipDataset(_source(volume_file, (0, 3)), clip_length=4, crop_size=16)[0]


def test_ignore_codes_and_padding_are_invalid(volume_file: Path) -> None:
    dataset = SliceCropDataset(_source(volume_file), crop_size=128, samples_per_epoch=3, p_fg=0.0)
    item = dataset[0]
    valid = item["valid"].numpy()
    # The 96×96 slice sits centred in the 128×128 crop; the last 6 rows are ignore code 9.
    assert valid.sum() == 90 * 96
    assert not valid[:16].any() and not valid[:, :16].any() and valid[16:106, 16:112].all()
    assert np.isfinite(item["image"].numpy()).all()


def _fraction_with_synapse(p_fg: float, path: Path, samples: int = 300) -> float:
    dataset = SliceCropDataset(_source(path), crop_size=16, samples_per_epoch=samples, p_fg=p_fg, fg_stride=2)
    return float(np.mean([dataset[i]["targets"][1].any().item() for i in range(samples)]))


def test_foreground_sampling_finds_rare_class(volume_file: Path) -> None:
    uniform = _fraction_with_synapse(0.0, volume_file)
    aware = _fraction_with_synapse(0.5, volume_file)
    # Half the crops are foreground-centred, half of those on the synapse: ≈ 25 % vs ≈ 1 %.
    assert aware > 0.18
    assert aware > 5 * max(uniform, 0.01)


def test_items_depend_only_on_seed_epoch_index(volume_file: Path) -> None:
    def make() -> ClipDataset:
        return ClipDataset(
            _source(volume_file),
            clip_length=3,
            crop_size=32,
            samples_per_epoch=8,
            augment=AugmentConfig(),
            seed=3,
        )

    first, second = make(), make()
    for index in (5, 0, 7):
        a, b = first[index], second[index]
        for key in ("image", "targets", "valid", "z"):
            assert torch.equal(a[key], b[key])
    second.set_epoch(1)
    assert not torch.equal(first[0]["image"], second[0]["image"])
    first.set_epoch(1)
    assert torch.equal(first[0]["image"], second[0]["image"])
    other_seed = ClipDataset(_source(volume_file), clip_length=3, crop_size=32, samples_per_epoch=8, seed=4)
    assert not torch.equal(other_seed[0]["image"], make()[0]["image"])


def test_spawn_workers_reproduce_items(volume_file: Path) -> None:
    dataset = SliceCropDataset(
        _source(volume_file), crop_size=32, samples_per_epoch=6, augment=AugmentConfig(), seed=11
    )
    dataset.set_epoch(2)
    expected = [dataset[i] for i in range(len(dataset))]
    # The dataset has open readers now; pickling must drop them and the workers reopen.
    assert pickle.loads(pickle.dumps(dataset))[1]["z"] == expected[1]["z"]
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="spawn", shuffle=False)
    batches = list(loader)
    images = torch.cat([batch["image"] for batch in batches])
    assert torch.equal(images, torch.stack([item["image"] for item in expected]))
    assert torch.equal(
        torch.cat([b["targets"] for b in batches]), torch.stack([i["targets"] for i in expected])
    )


def test_sources_must_share_classes(volume_file: Path) -> None:
    other = VolumeSource(volume_file, volume_file, ClassMapping.parse("glia=1"), "raw", "labels")
    with pytest.raises(ValueError, match="same classes"):
        SliceCropDataset([_source(volume_file), other])


def test_split_z_contiguous_with_gap() -> None:
    train, val = split_z(165, val_fraction=0.15, position="end", gap=8)
    assert val == (140, 165) and train == (0, 132)
    assert set(range(*train)).isdisjoint(range(*val)) and val[0] - train[1] == 8
    train, val = split_z(100, val_fraction=0.2, position="start", gap=4)
    assert val == (0, 20) and train == (24, 100)
    assert split_z(10, val_fraction=0.1, gap=0) == ((0, 9), (9, 10))
    with pytest.raises(ValueError, match="no training slices"):
        split_z(10, val_fraction=0.15, gap=8)
    with pytest.raises(ValueError, match="val_fraction"):
        split_z(10, val_fraction=1.0)
    with pytest.raises(ValueError, match="position"):
        split_z(100, position="middle")  # type: ignore[arg-type]


@pytest.mark.data
def test_dataset_sources_never_validate_on_test(data_dir: Path) -> None:
    splits = dataset_sources("lucchi_pp", data_dir=data_dir, val_fraction=0.15, gap=8)
    (train,), (val,), (test,) = splits.train, splits.val, splits.test
    assert train.image_path == val.image_path == data_dir / "lucchi_pp" / "train_image.tif"
    assert test.label_path == data_dir / "lucchi_pp" / "test_label.tif" and test.z_range is None
    assert train.z_range == (0, 132) and val.z_range == (140, 165)
    assert train.mapping.names == ("mito",)


@pytest.mark.data
def test_real_lucchi_crop(data_dir: Path) -> None:
    splits = dataset_sources("lucchi_pp", data_dir=data_dir, gap=8)
    dataset = SliceCropDataset(
        splits.train[0],
        crop_size=128,
        samples_per_epoch=4,
        p_fg=1.0,
        fg_stride=16,
        fg_z_stride=40,
        percentile_slices=2,
        augment=AugmentConfig(),
    )
    for index in range(2):
        item = dataset[index]
        assert item["image"].shape == (1, 128, 128) and item["targets"].shape == (1, 128, 128)
        assert item["targets"].any() and item["valid"].all()
        assert item["image"].min() >= -0.5 and item["image"].max() <= 1.5 and item["image"].std() > 0.05
        assert item["z"] < 132


def test_percentile_normalize_range_constant_and_nonfinite() -> None:
    image = np.random.default_rng(0).normal(100.0, 20.0, (64, 64))
    out = percentile_normalize(image)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    constant = percentile_normalize(np.full((3, 8, 8), 7, dtype=np.uint8))
    assert constant.dtype == np.float32 and not constant.any()
    bad = image.copy()
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        cleaned = percentile_normalize(bad)
    assert np.isfinite(cleaned).all() and cleaned[0, :3].tolist() == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(cleaned[1:], out[1:], atol=0.02)
    with pytest.warns(RuntimeWarning):
        assert not percentile_normalize(np.full((4, 4), np.nan)).any()


def test_volume_percentiles_reads_a_sample_of_slices() -> None:
    class CountingVolume:
        def __init__(self, data: np.ndarray) -> None:
            self.data, self.shape, self.read = data, data.shape, []

        def __getitem__(self, index: int) -> np.ndarray:
            self.read.append(index)
            return self.data[index]

    data = np.broadcast_to(np.arange(1000, dtype=np.float32)[:, None, None], (1000, 16, 16))
    volume = CountingVolume(data)
    low, high = volume_percentiles(volume, 1.0, 99.5, max_slices=10)
    assert len(volume.read) == 10 and volume.read[0] == 0 and volume.read[-1] == 999
    assert 0.0 <= low < 50.0 and 950.0 < high <= 999.0
    normalized = percentile_normalize(data[500], bounds=(low, high))
    assert 0.4 < float(normalized.mean()) < 0.6
