"""Clip augmentation: one transform for every slice, labels kept binary and aligned."""

from __future__ import annotations

import numpy as np
import pytest

from sam4em.data.augment import AugmentConfig, augment_clip

TRANSFORMS = [
    "flip",
    "rot90",
    "affine",
    "elastic",
    "brightness_contrast",
    "gamma",
    "blur",
    "noise",
    "reverse",
]
GEOMETRIC = ["flip", "rot90", "affine", "elastic"]


def _all_transforms() -> AugmentConfig:
    return AugmentConfig.only(*TRANSFORMS, elastic_magnitude=6.0, elastic_spacing=16)


def _discs(size: int = 64, seed: int = 0) -> np.ndarray:
    """(size, size) binary image of a few discs: smooth shapes with little boundary."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size), dtype=np.float32)
    for _ in range(4):
        cy, cx, r = [*rng.uniform(12, size - 12, 2).tolist(), rng.uniform(5, 10)]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1.0
    return image


def _clip_of_identical_slices(k: int = 4, size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = np.repeat(rng.random((1, size, size), dtype=np.float32), k, axis=0)
    targets = np.repeat((rng.random((2, 1, size, size)) > 0.7).astype(np.float32), k, axis=1)
    mask = np.ones((k, size, size), dtype=bool)
    mask[:, :5] = False
    return image, targets, mask


@pytest.mark.parametrize("transform", [*TRANSFORMS, "all"])
def test_identical_slices_stay_identical(transform: str) -> None:
    config = _all_transforms() if transform == "all" else AugmentConfig.only(transform, elastic_spacing=16)
    image, targets, mask = _clip_of_identical_slices()
    for seed in range(3):
        out = augment_clip(image, targets, np.random.default_rng(seed), config, mask=mask)
        assert out.image.shape == image.shape and out.image.dtype == np.float32
        assert out.targets.shape == targets.shape and out.mask is not None and out.mask.shape == mask.shape
        for k in range(1, image.shape[0]):
            np.testing.assert_array_equal(out.image[k], out.image[0])
            np.testing.assert_array_equal(out.targets[:, k], out.targets[:, 0])
            np.testing.assert_array_equal(out.mask[k], out.mask[0])
        assert set(np.unique(out.targets)) <= {0.0, 1.0}
        assert np.isfinite(out.image).all()


@pytest.mark.parametrize("transform", [*GEOMETRIC, "all"])
def test_geometry_moves_image_and_labels_together(transform: str) -> None:
    config = _all_transforms() if transform == "all" else AugmentConfig.only(transform, elastic_spacing=16)
    for seed in range(4):
        label = _discs(seed=seed)
        image = np.stack([label, np.roll(label, 3, axis=1)])
        targets = image[None].copy()
        out = augment_clip(image, targets, np.random.default_rng(seed), config)
        if transform != "all":
            assert not np.array_equal(out.targets, targets) or transform == "affine"
            # Bilinear image vs nearest labels: they may differ only on the disc outlines.
            disagree = (out.image > 0.5) != (out.targets[0] > 0.5)
            assert disagree.mean() < 0.02
        assert set(np.unique(out.targets)) <= {0.0, 1.0}


def test_intensity_transforms_leave_labels_untouched() -> None:
    image, targets, _ = _clip_of_identical_slices()
    for transform in ["brightness_contrast", "gamma", "blur", "noise"]:
        out = augment_clip(image, targets, np.random.default_rng(0), AugmentConfig.only(transform))
        np.testing.assert_array_equal(out.targets, targets)
        assert not np.allclose(out.image, image)


def test_reversal_flips_slice_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((5, 16, 16), dtype=np.float32)
    targets = (rng.random((2, 5, 16, 16)) > 0.5).astype(np.float32)
    mask = rng.random((5, 16, 16)) > 0.5
    out = augment_clip(image, targets, np.random.default_rng(0), AugmentConfig.only("reverse"), mask=mask)
    assert out.reversed
    np.testing.assert_array_equal(out.image, image[::-1])
    np.testing.assert_array_equal(out.targets, targets[:, ::-1])
    np.testing.assert_array_equal(out.mask, mask[::-1])
    kept = augment_clip(image, targets, np.random.default_rng(0), AugmentConfig.only("flip"))
    assert not kept.reversed


def test_reproducible_with_seeded_generator_and_switchable() -> None:
    image, targets, mask = _clip_of_identical_slices()
    first = augment_clip(image, targets, np.random.default_rng(7), _all_transforms(), mask=mask)
    second = augment_clip(image, targets, np.random.default_rng(7), _all_transforms(), mask=mask)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.targets, second.targets)
    off = augment_clip(image, targets, np.random.default_rng(7), AugmentConfig.disabled(), mask=mask)
    np.testing.assert_array_equal(off.image, image)
    np.testing.assert_array_equal(off.targets, targets)
    assert off.mask is not None and off.mask is not mask and np.array_equal(off.mask, mask)


def test_non_square_crops_keep_their_shape() -> None:
    image = np.random.default_rng(0).random((2, 16, 24), dtype=np.float32)
    targets = (image > 0.5)[None].astype(np.uint8)
    for seed in range(4):
        out = augment_clip(image, targets, np.random.default_rng(seed), _all_transforms())
        assert out.image.shape == (2, 16, 24) and out.targets.shape == (1, 2, 16, 24)
        assert out.targets.dtype == np.uint8


def test_config_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="p_flip"):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="unknown transform"):
        AugmentConfig.only("shear")
    image = np.zeros((2, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="targets"):
        augment_clip(image, np.zeros((1, 3, 8, 8)), np.random.default_rng(0))
