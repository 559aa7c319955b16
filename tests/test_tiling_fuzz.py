"""Property tests: tiling invariants over random image shapes, tile shapes and halos."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sam4em.inference.tiling import blend_tiles, blending_weights, tile_grid, z_blocks

pairs = st.tuples
image_shapes = pairs(st.integers(1, 48), st.integers(1, 48))
tile_shapes = pairs(st.integers(1, 20), st.integers(1, 20))
halos = pairs(st.integers(0, 12), st.integers(0, 12))


@settings(max_examples=100, deadline=None)
@given(image_shape=image_shapes, tile_shape=tile_shapes, halo=halos)
def test_grid_invariants(image_shape, tile_shape, halo):
    tiles = tile_grid(image_shape, tile_shape, halo)
    owners = np.zeros(image_shape, dtype=np.int64)
    total = np.zeros(image_shape, dtype=np.float64)
    window_shape = tuple(min(t + 2 * h, s) for s, t, h in zip(image_shape, tile_shape, halo, strict=True))
    for tile in tiles:
        assert tile.window_shape == window_shape
        for axis in range(2):
            window, inner = tile.window[axis], tile.inner[axis]
            assert 0 <= window.start <= inner.start < inner.stop <= window.stop <= image_shape[axis]
            assert inner.stop - inner.start <= tile_shape[axis]
            assert tile.inner_in_window[axis] == slice(inner.start - window.start, inner.stop - window.start)
        owners[tile.inner] += 1
        total[tile.window] += blending_weights(tile.window_shape, halo)
    assert (owners == 1).all()
    assert (total > 0).all()

    normalised = np.zeros(image_shape, dtype=np.float64)
    for tile in tiles:
        normalised[tile.window] += blending_weights(tile.window_shape, halo) / total[tile.window]
    np.testing.assert_allclose(normalised, 1.0, rtol=0, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(image_shape=image_shapes, tile_shape=tile_shapes, halo=halos, seed=st.integers(0, 2**32 - 1))
def test_blending_consistent_predictions_has_no_seams(image_shape, tile_shape, halo, seed):
    truth = np.random.default_rng(seed).random((2, *image_shape), dtype=np.float32)
    tiles = tile_grid(image_shape, tile_shape, halo)
    predictions = (truth[(slice(None), *tile.window)] for tile in tiles)
    blended = blend_tiles(tiles, predictions, image_shape, halo)
    # float32 accumulation: a pixel can sum up to (2·halo_y+1)·(2·halo_x+1) windows (273 for a 1×1 tile
    # with a 10×6 halo), so rounding reaches ~273 · 6e-8 ≈ 1.6e-5 relative; a seam would be far larger.
    np.testing.assert_allclose(blended, truth, rtol=1e-4, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(num_slices=st.integers(1, 200), block_size=st.integers(1, 64), overlap=st.integers(0, 32))
def test_z_blocks_partition(num_slices, block_size, overlap):
    blocks = z_blocks(num_slices, block_size, overlap)
    owned = np.zeros(num_slices, dtype=np.int64)
    for block in blocks:
        owned[block.write] += 1
        assert block.read_forward == slice(max(block.write.start - overlap, 0), block.write.stop)
        assert block.read_backward == slice(block.write.start, min(block.write.stop + overlap, num_slices))
    assert (owned == 1).all()
    assert len(blocks) == -(-num_slices // block_size)
