"""Tiling maths: ownership partitions the image, windows stay inside, blending has no seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam4em.inference.tiling import (
    Tile,
    TileBlender,
    blend_tiles,
    blending_weights,
    crop_from_window,
    pad_to_window,
    tile_grid,
    z_blocks,
)

SHAPES = [
    # (image_shape, tile_shape, halo)
    ((64, 64), (32, 32), (8, 8)),
    ((100, 37), (32, 16), (8, 4)),
    ((513, 257), (256, 128), (32, 16)),
    ((7, 5), (3, 2), (1, 2)),
    ((1, 1), (1, 1), (0, 0)),
    ((1, 40), (4, 8), (3, 3)),
    ((33, 33), (64, 64), (16, 16)),
    ((50, 70), (16, 16), (0, 0)),
    ((31, 29), (5, 7), (11, 13)),
]


def owner_count(tiles: tuple[Tile, ...], image_shape: tuple[int, int]) -> np.ndarray:
    count = np.zeros(image_shape, dtype=np.int64)
    for tile in tiles:
        count[tile.inner] += 1
    return count


def weight_sum(tiles: tuple[Tile, ...], image_shape: tuple[int, int], halo: tuple[int, int]) -> np.ndarray:
    total = np.zeros(image_shape, dtype=np.float64)
    for tile in tiles:
        total[tile.window] += blending_weights(tile.window_shape, halo)
    return total


def consistent_predictions(tiles: tuple[Tile, ...], truth: np.ndarray) -> list[np.ndarray]:
    """Every window predicts exactly the truth for the pixels it reads."""
    return [truth[(slice(None), *tile.window)].copy() for tile in tiles]


@pytest.mark.parametrize(("image_shape", "tile_shape", "halo"), SHAPES)
def test_inner_regions_partition_the_image(image_shape, tile_shape, halo):
    tiles = tile_grid(image_shape, tile_shape, halo)
    assert np.array_equal(owner_count(tiles, image_shape), np.ones(image_shape))


@pytest.mark.parametrize(("image_shape", "tile_shape", "halo"), SHAPES)
def test_windows_lie_inside_the_image_and_contain_their_inner_region(image_shape, tile_shape, halo):
    tiles = tile_grid(image_shape, tile_shape, halo)
    expected_window = tuple(min(t + 2 * h, s) for s, t, h in zip(image_shape, tile_shape, halo, strict=True))
    for tile in tiles:
        assert tile.window_shape == expected_window
        for axis in range(2):
            window, inner, relative = tile.window[axis], tile.inner[axis], tile.inner_in_window[axis]
            assert 0 <= window.start < window.stop <= image_shape[axis]
            assert window.start <= inner.start < inner.stop <= window.stop
            assert inner.stop - inner.start <= tile_shape[axis]
            assert relative.start == inner.start - window.start
            assert relative.stop == inner.stop - window.start


@pytest.mark.parametrize(("image_shape", "tile_shape", "halo"), SHAPES)
def test_normalised_weights_sum_to_one_everywhere(image_shape, tile_shape, halo):
    tiles = tile_grid(image_shape, tile_shape, halo)
    total = weight_sum(tiles, image_shape, halo)
    assert (total > 0).all()
    normalised = np.zeros(image_shape)
    for tile in tiles:
        normalised[tile.window] += blending_weights(tile.window_shape, halo) / total[tile.window]
    np.testing.assert_allclose(normalised, 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("image_shape", "tile_shape", "halo"), SHAPES)
def test_blending_consistent_predictions_reproduces_them(image_shape, tile_shape, halo):
    rng = np.random.default_rng(0)
    truth = rng.random((2, *image_shape), dtype=np.float32)
    tiles = tile_grid(image_shape, tile_shape, halo)
    blended = blend_tiles(tiles, consistent_predictions(tiles, truth), image_shape, halo)
    assert blended.shape == truth.shape and blended.dtype == np.float32
    np.testing.assert_allclose(blended, truth, rtol=1e-5, atol=1e-6)


def test_blending_constant_predictions_returns_the_constant():
    image_shape, halo = (90, 61), (12, 6)
    tiles = tile_grid(image_shape, (32, 24), halo)
    blender = TileBlender(image_shape, halo, num_channels=3)
    for tile in tiles:
        blender.add(tile, np.full((3, *tile.window_shape), 0.375, dtype=np.float32))
    np.testing.assert_allclose(blender.result(), 0.375, rtol=1e-6)


def test_blender_takes_any_numpy_view_and_torch_tensors():
    """Flipped (negative-stride), read-only and float64 arrays and tensors blend like plain arrays."""
    image_shape, halo = (40, 36), (4, 4)
    tiles = tile_grid(image_shape, (16, 16), halo)
    rng = np.random.default_rng(0)
    predictions = [rng.random((2, *tile.window_shape)) for tile in tiles]
    plain = blend_tiles(tiles, [p.astype(np.float32) for p in predictions], image_shape, halo)
    views = TileBlender(image_shape, halo, num_channels=2)
    for number, (tile, prediction) in enumerate(zip(tiles, predictions, strict=True)):
        flipped = np.ascontiguousarray(prediction[:, ::-1])[:, ::-1]  # a negative-stride view
        flipped.flags.writeable = False
        views.add(tile, flipped if number % 2 else torch.from_numpy(prediction.astype(np.float32)))
    np.testing.assert_array_equal(views.result(), plain)


def test_hard_stitching_with_inner_regions_reproduces_the_image():
    image_shape = (45, 38)
    truth = np.arange(np.prod(image_shape), dtype=np.float32).reshape(image_shape)
    stitched = np.full(image_shape, np.nan, dtype=np.float32)
    for tile in tile_grid(image_shape, (16, 16), (4, 4)):
        stitched[tile.inner] = truth[tile.window][tile.inner_in_window]
    assert np.array_equal(stitched, truth)


def test_blender_rejects_uncovered_pixels_and_wrong_shapes():
    tiles = tile_grid((40, 40), (16, 16), (4, 4))
    blender = TileBlender((40, 40), (4, 4), num_channels=1)
    with pytest.raises(ValueError, match="shape"):
        blender.add(tiles[0], np.zeros((2, *tiles[0].window_shape), dtype=np.float32))
    blender.add(tiles[0], np.zeros((1, *tiles[0].window_shape), dtype=np.float32))
    with pytest.raises(ValueError, match="covered by no window"):
        blender.result()
    with pytest.raises(ValueError, match="at least one tile"):
        blend_tiles((), (), (40, 40), 4)


def test_blending_weights_shape_range_and_plateau():
    weights = blending_weights((48, 40), (8, 4))
    assert weights.shape == (48, 40) and weights.dtype == np.float32
    assert (weights > 0).all() and (weights <= 1).all()
    assert (weights[8:40, 4:36] == 1).all()  # the core is a plateau of exactly 1
    assert weights[0, 0] < weights[4, 2] < weights[8, 4]  # rises monotonically across the halo
    np.testing.assert_allclose(weights, weights[::-1, ::-1])  # symmetric
    assert not weights.flags.writeable  # cached: must not be mutated by callers
    assert blending_weights((48, 40), (8, 4)) is weights


def test_blending_weights_halo_zero_and_short_window():
    assert (blending_weights((5, 7), 0) == 1).all()
    short = blending_weights((3, 1), (10, 10))  # ramp shortened to fit a tiny window
    assert short.shape == (3, 1) and (short > 0).all()


def test_halo_zero_gives_disjoint_windows_equal_to_inner_regions_on_an_exact_grid():
    tiles = tile_grid((64, 96), (32, 32), 0)
    assert len(tiles) == 6
    assert all(tile.window == tile.inner for tile in tiles)
    assert [tile.index for tile in tiles] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_inner_regions_are_balanced_instead_of_leaving_a_sliver():
    tiles = tile_grid((257, 64), (128, 64), (16, 0))
    sizes = sorted(tile.inner_shape[0] for tile in tiles)
    assert sizes == [85, 86, 86]


def test_int_arguments_apply_to_both_axes_and_grid_is_cached():
    assert tile_grid((50, 50), 16, 4) == tile_grid([50, 50], (16, 16), [4, 4])
    assert tile_grid((50, 50), 16, 4) is tile_grid((50, 50), (16, 16), (4, 4))


def test_tiles_and_blocks_are_hashable():
    tiles = tile_grid((50, 50), 16, 4)
    assert len(set(tiles)) == len(tiles)
    assert {tiles[0]: 1}[tile_grid((50, 50), 16, 4)[0]] == 1
    blocks = z_blocks(50, 8, 2)
    assert len(set(blocks)) == len(blocks)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (((0, 10), 4, 1), "image_shape"),
        (((10, 10), (4, 0), 1), "tile_shape"),
        (((10, 10), 4, -1), "halo"),
        (((10, 10.5), 4, 1), "image_shape"),
        (((10, 10, 10), 4, 1), "2 entries"),
        ((10, 4, 1), "image_shape"),
        (((10, 10), True, 1), "tile_shape"),
    ],
)
def test_tile_grid_validates_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        tile_grid(*args)


def test_image_smaller_than_window_is_padded_and_cropped_back():
    image_shape, tile_shape, halo = (20, 9), (32, 32), (8, 8)
    model_input = (48, 48)
    tiles = tile_grid(image_shape, tile_shape, halo)
    assert len(tiles) == 1
    tile = tiles[0]
    assert tile.window == (slice(0, 20), slice(0, 9)) and tile.inner == tile.window

    image = np.random.default_rng(1).random((3, *image_shape)).astype(np.float32)
    padded = pad_to_window(image[(slice(None), *tile.window)], model_input)
    assert padded.shape == (3, 48, 48)
    assert np.array_equal(padded[:, :20, :9], image)
    assert np.array_equal(padded[:, 20, :9], image[:, 18])  # reflected, edge pixel not repeated
    prediction = padded * 2  # a stand-in model
    cropped = crop_from_window(prediction, image.shape)
    assert np.array_equal(cropped, image * 2)
    blended = blend_tiles(tiles, [cropped], image_shape, halo)
    np.testing.assert_allclose(blended, image * 2, rtol=1e-6)


def test_pad_to_window_leaves_large_axes_and_single_pixels_work():
    image = np.arange(60, dtype=np.float32).reshape(6, 10)
    assert pad_to_window(image, (4, 4)) is image
    padded = pad_to_window(image, (8, 4))
    assert padded.shape == (8, 10)
    single = pad_to_window(np.ones((1, 1), dtype=np.float32), (5, 3))
    assert single.shape == (5, 3) and (single == 1).all()
    with pytest.raises(ValueError, match="smaller"):
        crop_from_window(image, (7, 10))


@pytest.mark.parametrize(
    ("num_slices", "block_size", "overlap"),
    [(10, 4, 2), (1, 1, 0), (1, 8, 3), (100, 16, 7), (17, 17, 5), (9, 2, 20)],
)
def test_z_blocks_partition_and_warmup(num_slices, block_size, overlap):
    blocks = z_blocks(num_slices, block_size, overlap)
    owned = np.zeros(num_slices, dtype=np.int64)
    for index, block in enumerate(blocks):
        assert block.index == index
        owned[block.write] += 1
        assert 0 < block.write.stop - block.write.start <= block_size
        assert block.read_forward.stop == block.write.stop
        assert block.read_backward.start == block.write.start
        assert block.forward_warmup == min(overlap, block.write.start)
        assert block.backward_warmup == min(overlap, num_slices - block.write.stop)
        assert block.read == slice(block.read_forward.start, block.read_backward.stop)
        assert 0 <= block.read.start <= block.write.start < block.write.stop <= block.read.stop <= num_slices
    assert (owned == 1).all()
    # Consecutive blocks: each starts where the previous one stopped.
    assert [b.write.start for b in blocks[1:]] == [b.write.stop for b in blocks[:-1]]


def test_z_blocks_example_and_validation():
    blocks = z_blocks(10, 4, 2)
    assert [(b.write.start, b.write.stop) for b in blocks] == [(0, 4), (4, 8), (8, 10)]
    assert [(b.read_forward.start, b.read_forward.stop) for b in blocks] == [(0, 4), (2, 8), (6, 10)]
    assert [(b.read_backward.start, b.read_backward.stop) for b in blocks] == [(0, 6), (4, 10), (8, 10)]
    for args in [(0, 4, 1), (10, 0, 1), (10, 4, -1)]:
        with pytest.raises(ValueError):
            z_blocks(*args)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_reflect_padding_matches_numpy_reflect_for_numpy_and_torch(size: int) -> None:
    image = np.random.default_rng(size).random((2, size, 5)).astype(np.float32)
    for target in (size, size + 1, 2 * size + 3, 4 * size + 9):
        expected = np.pad(image, [(0, 0), (0, target - size), (0, 0)], mode="reflect")
        np.testing.assert_array_equal(pad_to_window(image, (target, 5)), expected)
        np.testing.assert_array_equal(pad_to_window(torch.from_numpy(image), (target, 5)).numpy(), expected)
