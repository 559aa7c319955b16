"""Post-processing: semantic labels, instances with watershed splitting, uint8 probability storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam4em.inference.postprocess import (
    from_uint8_probs,
    probs_to_instances,
    probs_to_labels,
    to_uint8_probs,
)


def ball(
    shape: tuple[int, int, int], centre: tuple[float, ...], radius: float, scale=(1.0, 1.0, 1.0)
) -> np.ndarray:
    """Boolean (Z, Y, X) ball; ``scale`` is the voxel size, so the ball is round in physical space."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, scale, strict=True))
    return distance2 <= radius**2


def touching_balls() -> np.ndarray:
    """Two radius-8 balls whose centres are 14 voxels apart: one component joined by a narrow neck."""
    shape = (24, 24, 40)
    return ball(shape, (12, 12, 12), 8) | ball(shape, (12, 12, 26), 8)


# --- probs_to_labels ---------------------------------------------------------------------------------


def test_labels_from_hand_made_probabilities():
    # Three classes at five voxels (Z=1, Y=1, X=5).
    probs = np.array(
        [
            [0.9, 0.2, 0.6, 0.4, 0.7],  # class 1
            [0.1, 0.8, 0.6, 0.3, 0.5],  # class 2 (voxel 2: tie with class 1; voxel 4: exactly at threshold)
            [0.0, 0.1, 0.2, 0.45, 0.2],  # class 3
        ],
        dtype=np.float32,
    ).reshape(3, 1, 1, 5)
    labels = probs_to_labels(probs, threshold=0.5)
    assert labels.dtype == np.uint8 and labels.shape == (1, 1, 5)
    # Voxel 2: tie goes to the lower class. Voxel 3: all below threshold -> background.
    assert labels.ravel().tolist() == [1, 2, 1, 0, 1]


def test_labels_threshold_is_strict_and_argmax_only_among_candidates():
    probs = np.array([[0.5, 0.55], [0.3, 0.2]], dtype=np.float64).reshape(2, 1, 1, 2)
    assert probs_to_labels(probs, threshold=0.5).ravel().tolist() == [0, 1]
    assert probs_to_labels(probs, threshold=0.25).ravel().tolist() == [1, 1]
    assert probs_to_labels(probs, threshold=0.6).ravel().tolist() == [0, 0]


def test_labels_ignore_nan_and_reject_integer_input():
    probs = np.array([[np.nan], [0.7]], dtype=np.float32).reshape(2, 1, 1, 1)
    assert probs_to_labels(probs).ravel().tolist() == [2]
    with pytest.raises(TypeError, match="from_uint8_probs"):
        probs_to_labels(np.zeros((2, 1, 1, 1), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_labels_match_masked_argmax_on_random_data(kind: str):
    """Tensors (what `sam4em segment` labels on the model's device) give what arrays give, as tensors."""
    probs = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    probs[2, 0, 0] = probs[1, 0, 0] = 0.9  # a tie: the lower class wins
    probs[3, 0, 1] = np.nan
    masked = np.where(np.nan_to_num(probs) > 0.6, np.nan_to_num(probs), -1.0)
    expected = np.where((masked > 0).any(axis=0), masked.argmax(axis=0) + 1, 0)
    labels = probs_to_labels(torch.from_numpy(probs) if kind == "torch" else probs, threshold=0.6)
    assert isinstance(labels, torch.Tensor if kind == "torch" else np.ndarray)
    assert np.array_equal(np.asarray(labels), expected) and labels.dtype in (np.uint8, torch.uint8)


# --- probs_to_instances ------------------------------------------------------------------------------


def test_two_separate_blobs_give_two_ids():
    shape = (16, 20, 30)
    mask = ball(shape, (8, 10, 7), 4) | ball(shape, (8, 10, 22), 4)
    probs = mask.astype(np.float32) * 0.9
    instances = probs_to_instances(probs)
    assert instances.dtype == np.uint32 and instances.shape == shape
    assert set(np.unique(instances).tolist()) == {0, 1, 2}
    assert np.array_equal(instances > 0, mask)
    # Each blob is a single id.
    assert len(np.unique(instances[ball(shape, (8, 10, 7), 4)])) == 1


def test_blob_below_min_size_is_removed():
    shape = (16, 20, 30)
    big, small = ball(shape, (8, 10, 8), 5), ball(shape, (8, 10, 24), 2)
    instances = probs_to_instances(big | small, min_size=100)
    assert small.sum() < 100 <= big.sum()
    assert set(np.unique(instances).tolist()) == {0, 1}
    assert np.array_equal(instances > 0, big)


def test_touching_balls_split_by_watershed_but_not_without():
    mask = touching_balls()
    assert probs_to_instances(mask).max() == 1
    for seeds in ("h_maxima", "peak_local_max"):
        split = probs_to_instances(mask, watershed=True, seeds=seeds)
        ids, sizes = np.unique(split[split > 0], return_counts=True)
        assert ids.tolist() == [1, 2], seeds
        assert np.array_equal(split > 0, mask)  # watershed never drops or adds voxels
        assert abs(int(sizes[0]) - int(sizes[1])) < 0.05 * sizes.sum()
        # Each ball centre belongs to a different instance.
        assert split[12, 12, 12] != split[12, 12, 26]


def test_large_h_merges_touching_balls():
    assert probs_to_instances(touching_balls(), watershed=True, h=6.0).max() == 1


def test_watershed_uses_anisotropic_voxel_size():
    # Balls in physical space with 4x coarser z: flattened in voxel space.
    scale = (40.0, 10.0, 10.0)
    shape = (12, 24, 40)
    mask = ball(shape, (6, 12, 12), 80, scale) | ball(shape, (6, 12, 26), 80, scale)
    split = probs_to_instances(mask, watershed=True, voxel_size=scale, h=20.0)  # h in nm
    assert split.max() == 2
    assert split[6, 12, 12] != split[6, 12, 26]


def test_thin_objects_without_a_seed_are_kept():
    # A one-voxel-thick sheet: its distance maximum (1) is lower than h, so h-maxima gives no seed.
    mask = np.zeros((5, 10, 10), dtype=bool)
    mask[2, 2:8, 2:8] = True
    instances = probs_to_instances(mask, watershed=True, h=3.0)
    assert instances.max() == 1 and np.array_equal(instances > 0, mask)


def test_ids_unique_and_consecutive_across_classes():
    shape = (12, 16, 32)
    probs = np.zeros((3, *shape), dtype=np.float32)
    probs[0][ball(shape, (6, 8, 6), 3) | ball(shape, (6, 8, 24), 3)] = 0.9
    probs[1][ball(shape, (6, 8, 15), 4)] = 0.8
    probs[2][ball(shape, (6, 8, 6), 3)] = 0.7  # overlaps class 0 spatially: classes are independent
    instances = probs_to_instances(probs, watershed=True)
    assert instances.shape == (3, *shape) and instances.dtype == np.uint32
    per_class = [set(np.unique(channel[channel > 0]).tolist()) for channel in instances]
    assert per_class == [{1, 2}, {3}, {4}]


def test_empty_input_gives_no_instances():
    probs = np.zeros((2, 4, 5, 6), dtype=np.float32)
    assert not probs_to_instances(probs, watershed=True).any()


def test_connectivity_controls_diagonal_joins():
    mask = np.zeros((3, 4, 4), dtype=bool)
    mask[1, 1, 1] = mask[1, 2, 2] = True
    assert probs_to_instances(mask, connectivity=1).max() == 2
    assert probs_to_instances(mask, connectivity=2).max() == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"connectivity": 4}, ValueError),
        ({"min_size": -1}, ValueError),
        ({"voxel_size": (1.0, 1.0)}, ValueError),
        ({"watershed": True, "h": 0.0}, ValueError),
        ({"watershed": True, "seeds": "random"}, ValueError),
    ],
)
def test_instances_validate_arguments(kwargs, error):
    with pytest.raises(error):
        probs_to_instances(touching_balls(), **kwargs)


def test_instances_reject_wrong_rank():
    with pytest.raises(ValueError, match="shape"):
        probs_to_instances(np.zeros((4, 4), dtype=np.float32))


# --- uint8 storage -----------------------------------------------------------------------------------


def test_uint8_round_trip_error_bound():
    probs = np.concatenate(
        [np.random.default_rng(0).random(100_000, dtype=np.float32), np.arange(511, dtype=np.float32) / 510]
    )
    quantised = to_uint8_probs(probs)
    assert quantised.dtype == np.uint8 and quantised.shape == probs.shape
    restored = from_uint8_probs(quantised)
    assert restored.dtype == np.float32
    assert np.abs(restored - probs).max() <= 1 / 510 + 1e-6
    assert to_uint8_probs(np.array([0.0, 1.0, -0.3, 1.7])).tolist() == [0, 255, 0, 255]
    assert np.array_equal(to_uint8_probs(from_uint8_probs(quantised)), quantised)  # stable on re-encode


def test_uint8_of_tensors_is_numpys_rounding_as_a_tensor():
    probs = np.concatenate([np.random.default_rng(1).random(1000, dtype=np.float32),
                            (np.arange(256, dtype=np.float32) + 0.5) / 255, [-0.5, 1.5]]).astype(np.float32)
    quantised = to_uint8_probs(torch.from_numpy(probs))
    assert isinstance(quantised, torch.Tensor) and quantised.dtype == torch.uint8
    assert np.array_equal(quantised.numpy(), np.rint(np.clip(probs, 0, 1) * np.float32(255)).astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_probs(torch.tensor([0.5, float("nan")]))


def test_uint8_rejects_nan_and_wrong_dtypes():
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_probs(np.array([0.5, np.nan]))
    with pytest.raises(TypeError):
        from_uint8_probs(np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError):
        to_uint8_probs(np.zeros(3, dtype=np.uint8))
