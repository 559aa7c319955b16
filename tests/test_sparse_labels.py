"""Sparse annotation: only `labelled_slices` give loss; clips may hold unlabelled slices as context;
a model trains from one annotated slice (without validation when no annotated slice is left for it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file

from sam4em.data.class_mapping import ClassMapping
from sam4em.data.samples import ClipDataset, SliceCropDataset, VolumeSource, resolve_labelled_slices
from sam4em.training.config import ConfigError, config_from_dict
from sam4em.training.trainer import train, volume_sources

pytestmark = pytest.mark.usefixtures("one_thread")


def _volume(tmp_path: Path, depth: int = 12) -> tuple[Path, Path]:
    """Dark discs (label 255) on noisy gray, drifting in z."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    image = np.empty((depth, 64, 64), np.uint8)
    labels = np.zeros((depth, 64, 64), np.uint8)
    for z in range(depth):
        mask = (yy - 20 - z) ** 2 + (xx - 30) ** 2 < 10**2
        image[z] = np.clip(150 + rng.normal(0, 12, (64, 64)) - 90 * mask, 0, 255)
        labels[z] = 255 * mask
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    return tmp_path / "image.tif", tmp_path / "labels.tif"


def test_labelled_slices_resolve_to_evenly_spaced_or_given_slices():
    assert resolve_labelled_slices(None, (0, 10), (0, 12)) is None
    assert resolve_labelled_slices(1, (0, 10), (0, 12)) == (5,)
    assert resolve_labelled_slices(2, (0, 10), (0, 12)) == (2, 7)
    assert resolve_labelled_slices(10, (0, 10), (0, 12)) == tuple(range(10))
    assert resolve_labelled_slices([11, 3, 3], (0, 10), (0, 12)) == (3, 11)
    with pytest.raises(ValueError, match="between 1 and the 10"):
        resolve_labelled_slices(11, (0, 10), (0, 12))
    with pytest.raises(ValueError, match=r"0\.\.11"):
        resolve_labelled_slices([12], (0, 10), (0, 12))


def test_crops_come_from_labelled_slices_and_clips_mask_the_others(tmp_path):
    image, labels = _volume(tmp_path)
    source = VolumeSource(image, labels, ClassMapping.parse("mito=255"), z_range=(0, 10), labelled_slices=(2, 7))
    slices = SliceCropDataset(source, crop_size=32, samples_per_epoch=60, p_fg=0.5)
    assert {slices[i]["z"] for i in range(60)} == {2, 7}
    clips = ClipDataset(source, clip_length=4, crop_size=32, samples_per_epoch=60, p_fg=0.5)
    context_seen = False
    for i in range(60):
        item = clips[i]
        z = item["z"].tolist()
        assert {2, 7} & set(z), z  # every clip holds an annotated slice
        for k, slice_z in enumerate(z):
            if slice_z in (2, 7):
                assert item["valid"][k].any()
            else:
                context_seen = True
                assert not item["valid"][k].any()  # no loss on unannotated slices
    assert context_seen
    with pytest.raises(ValueError, match="none of the labelled slices"):
        SliceCropDataset(VolumeSource(image, labels, ClassMapping.parse("mito=255"), z_range=(0, 2), labelled_slices=(7,)),
                         crop_size=32, samples_per_epoch=1)[0]


def _config(image: Path, labels: Path, **volume):
    return config_from_dict({
        "classes": "mito=255",
        "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.25, **volume}],
        "model": {"base": "test-tiny"}, "stages": [1, 2], "augment": False, "tensorboard": False,
        "stage1": {"steps": 3, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1},
        "stage2": {"steps": 2, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1, "clip_length": 3},
        "val_every": 2, "val_samples": 2, "checkpoint_every": 2,
    })


def test_one_annotated_slice_trains_and_unannotated_labels_are_never_read(tmp_path):
    image, labels = _volume(tmp_path)
    # The same volume whose unannotated slices hold garbage: training must not see the difference.
    garbage = tifffile.imread(labels)
    garbage[np.arange(12) != 4] = np.random.default_rng(1).choice([0, 255], garbage[np.arange(12) != 4].shape)
    tifffile.imwrite(tmp_path / "garbage.tif", garbage)
    config = _config(image, labels, labelled_slices=[4])
    train_sources, val_sources = volume_sources(config, ClassMapping.parse("mito=255"))
    assert train_sources[0].labelled_slices == (4,) and val_sources == []  # nothing annotated to validate on
    for name, label_file in (("clean", labels), ("garbage", tmp_path / "garbage.tif")):
        result = train(_config(image, label_file, labelled_slices=[4]), tmp_path / name, progress=False)
        assert result.steps == {1: 3, 2: 2} and (tmp_path / name / "model.safetensors").exists()
    a, b = load_file(tmp_path / "clean" / "model.safetensors"), load_file(tmp_path / "garbage" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_labelled_slice_count_and_validation_slices(tmp_path):
    image, labels = _volume(tmp_path)
    train_sources, val_sources = volume_sources(_config(image, labels, labelled_slices=2), ClassMapping.parse("mito=255"))
    # 12 slices: validation 9-11, a gap of 3 (the clip length), training 0-5: two evenly spaced slices 1 and 4.
    assert train_sources[0].labelled_slices == (1, 4) and val_sources == []
    _, val_sources = volume_sources(_config(image, labels, labelled_slices=[1, 4, 10]), ClassMapping.parse("mito=255"))
    assert val_sources[0].z_range == (9, 12) and val_sources[0].labelled_slices == (1, 4, 10)
    with pytest.raises(ConfigError, match="none of \\[10\\] is in the training slices"):
        volume_sources(_config(image, labels, labelled_slices=[10]), ClassMapping.parse("mito=255"))
