"""In-plane tiling and z-blocking maths for large-volume inference (no model; grids, weights and blocks
are numpy, :class:`TileBlender` accumulates in torch on the device the predictions come from).

Vocabulary follows micro-sam:

* ``tile_shape`` (Y, X) is the core size a tile is responsible for;
* ``halo`` (Y, X) is the extra context the model sees on each side of that core;
* the model reads *windows* of ``tile_shape + 2 * halo`` pixels.

Windows are shifted at the image border so that every window lies fully inside the image and all
windows of one grid have the same shape (useful for batching). Along an axis where the image is shorter
than a window, the window is the whole axis; the caller pads that crop up to the model's input size
with :func:`pad_to_window` and crops the prediction back with :func:`crop_from_window`.

Two ways to stitch window predictions back into an image are supported:

* hard stitching: copy ``prediction[..., *tile.inner_in_window]`` to ``image[..., *tile.inner]``;
  the ``inner`` regions of a grid partition the image exactly;
* soft blending with :class:`TileBlender`: a weighted average of all windows covering a pixel, with
  :func:`blending_weights` ramping down across the halo so seams disappear.

:func:`z_blocks` splits a volume along z into independently processable blocks with warm-up slices
for memory-attention propagation (see :class:`ZBlock`).

All grids and weights are small pure functions of their (hashable) arguments and are cached.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import torch

from sam4em.data.tensors import as_tensor

__all__ = [
    "Tile",
    "TileBlender",
    "ZBlock",
    "blend_tiles",
    "blending_weights",
    "crop_from_window",
    "pad_to_window",
    "reflect_indices",
    "tile_grid",
    "z_blocks",
]

Pair = tuple[int, int]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # accepts numpy integers, rejects floats
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {number}")
    return number


def _as_pair(value: int | Sequence[int], name: str, minimum: int) -> Pair:
    """Validate a (Y, X) pair; a single integer applies to both axes."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be an integer or a (Y, X) pair, got {value!r}")
    if isinstance(value, (Sequence, np.ndarray)):
        items = tuple(value)
        if len(items) != 2:
            raise ValueError(f"{name} must have 2 entries (Y, X), got {len(items)}: {value!r}")
        return (_as_int(items[0], f"{name}[0]", minimum), _as_int(items[1], f"{name}[1]", minimum))
    number = _as_int(value, name, minimum)
    return (number, number)


def _shape_of(region: tuple[slice, slice]) -> Pair:
    return (region[0].stop - region[0].start, region[1].stop - region[1].start)


def _bounds(*regions: slice) -> tuple[tuple[int, int], ...]:
    # slice objects are unhashable before Python 3.12; hash their bounds so tiles and blocks can be
    # dict keys or set members (e.g. bookkeeping of finished work when resuming).
    return tuple((region.start, region.stop) for region in regions)


@dataclass(frozen=True)
class Tile:
    """One tile of a :func:`tile_grid`; all slices have explicit, non-negative start and stop.

    Attributes:
        index: (row, column) position of the tile in the grid.
        window: (Y, X) slices into the image: the pixels the model reads for this tile.
        inner: (Y, X) slices into the image: the pixels this tile owns (the inner regions of a grid
            partition the image).
        inner_in_window: ``inner`` expressed in window coordinates, i.e. the slices to apply to the
            window's prediction.
    """

    index: Pair
    window: tuple[slice, slice]
    inner: tuple[slice, slice]
    inner_in_window: tuple[slice, slice]

    def __hash__(self) -> int:
        return hash((self.index, _bounds(*self.window, *self.inner, *self.inner_in_window)))

    @property
    def window_shape(self) -> Pair:
        """(Y, X) size of the window."""
        return _shape_of(self.window)

    @property
    def inner_shape(self) -> Pair:
        """(Y, X) size of the owned region."""
        return _shape_of(self.inner)


def _axis_layout(length: int, tile: int, halo: int) -> tuple[tuple[slice, slice, slice], ...]:
    """(window, inner, inner_in_window) slices along one axis.

    The axis is cut into ``ceil(length / tile)`` owned segments of balanced size (each at most ``tile``)
    rather than a fixed stride, so no one-pixel sliver is left at the far border. Each window is
    centred on its segment and then shifted back inside ``[0, length)``.
    """
    count = math.ceil(length / tile)
    window = min(tile + 2 * halo, length)
    bounds = [(i * length) // count for i in range(count + 1)]
    layout = []
    for start, stop in itertools.pairwise(bounds):
        centred = start - (window - (stop - start)) // 2
        w_start = min(max(centred, 0), length - window)
        layout.append(
            (slice(w_start, w_start + window), slice(start, stop), slice(start - w_start, stop - w_start))
        )
    return tuple(layout)


@lru_cache(maxsize=256)
def _tile_grid(image_shape: Pair, tile_shape: Pair, halo: Pair) -> tuple[Tile, ...]:
    rows = _axis_layout(image_shape[0], tile_shape[0], halo[0])
    cols = _axis_layout(image_shape[1], tile_shape[1], halo[1])
    return tuple(
        Tile(index=(iy, ix), window=(wy, wx), inner=(cy, cx), inner_in_window=(ry, rx))
        for iy, (wy, cy, ry) in enumerate(rows)
        for ix, (wx, cx, rx) in enumerate(cols)
    )


def tile_grid(
    image_shape: Sequence[int], tile_shape: int | Sequence[int], halo: int | Sequence[int]
) -> tuple[Tile, ...]:
    """Tiles covering a (Y, X) image, in row-major order.

    Args:
        image_shape: (Y, X) size of the image, positive.
        tile_shape: (Y, X) core tile size, positive; an int applies to both axes. Owned regions are
            balanced along each axis, so they are at most this size.
        halo: (Y, X) context on each side, >= 0; an int applies to both axes.

    Returns:
        All tiles; every window has shape ``min(tile_shape + 2 * halo, image_shape)`` per axis and lies
        inside the image, and the ``inner`` regions partition the image.

    Raises:
        ValueError: on a non-integer, non-positive shape or a negative halo.
    """
    if isinstance(image_shape, (int, np.integer)):
        raise ValueError(f"image_shape must be a (Y, X) pair, got {image_shape!r}")
    return _tile_grid(
        _as_pair(image_shape, "image_shape", 1),
        _as_pair(tile_shape, "tile_shape", 1),
        _as_pair(halo, "halo", 0),
    )


def _ramp(length: int, halo: int) -> np.ndarray:
    """1D weights: raised-cosine rise over ``halo`` pixels at each end, 1 in between, never 0."""
    # Cap the ramp so rising and falling halves never overlap in a short window.
    ramp = min(halo, length // 2)
    weights = np.ones(length, dtype=np.float64)
    if ramp:
        # Sampling at pixel centres keeps the first value strictly positive.
        rise = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
        weights[:ramp] = rise
        weights[length - ramp :] = rise[::-1]
    return weights


@lru_cache(maxsize=64)
def _blending_weights(window_shape: Pair, halo: Pair) -> np.ndarray:
    weights = np.outer(_ramp(window_shape[0], halo[0]), _ramp(window_shape[1], halo[1])).astype(np.float32)
    weights.flags.writeable = False  # shared by the cache
    return weights


def blending_weights(window_shape: int | Sequence[int], halo: int | Sequence[int]) -> np.ndarray:
    """Weights for blending overlapping windows, float32 (Y, X), read-only and cached.

    Each axis rises smoothly (``sin**2`` sampled at pixel centres) across the ``halo`` pixels at both
    ends and is exactly 1 over the core, so predictions made with little context near a window's edge
    count less. The ramp is shortened for windows shorter than ``2 * halo`` (e.g. clipped to a small
    image). Every weight lies in (0, 1], so a pixel covered by a single window keeps its value.
    """
    return _blending_weights(_as_pair(window_shape, "window_shape", 1), _as_pair(halo, "halo", 0))


@lru_cache(maxsize=64)
def _weights_on(device: torch.device, window_shape: Pair, halo: Pair) -> torch.Tensor:
    """:func:`blending_weights` as a tensor on ``device`` (copied there once, not once per slice)."""
    return torch.from_numpy(_blending_weights(window_shape, halo).copy()).to(device)


class TileBlender:
    """Weighted average of overlapping window predictions into one (C, Y, X) image.

    Add each window's prediction with :meth:`add`, then call :meth:`result`. Because every covering
    window contributes with a positive weight and the sum is normalised per pixel, predictions that
    agree wherever they overlap are reproduced exactly (up to float32 rounding): no seams.
    The sums live on ``device`` (default the CPU): a GPU's predictions are blended where they are
    made, and :meth:`result` stays there too.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        halo: int | Sequence[int],
        num_channels: int,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        """
        Args:
            image_shape: (Y, X) size of the output image.
            halo: (Y, X) halo of the grid, used for :func:`blending_weights`.
            num_channels: C, the number of channels of each prediction.
            device: where the sums are kept (torch device; default CPU).
        """
        if isinstance(image_shape, (int, np.integer)):
            raise ValueError(f"image_shape must be a (Y, X) pair, got {image_shape!r}")
        self.image_shape = _as_pair(image_shape, "image_shape", 1)
        self.halo = _as_pair(halo, "halo", 0)
        self.num_channels = _as_int(num_channels, "num_channels", 1)
        self._sum = torch.zeros((self.num_channels, *self.image_shape), dtype=torch.float32, device=device)
        self._weight = torch.zeros(self.image_shape, dtype=torch.float32, device=device)

    def add(self, tile: Tile, prediction: np.ndarray | torch.Tensor) -> None:
        """Accumulate one window's prediction, shape (C, wy, wx) equal to ``tile.window_shape``."""
        expected = (self.num_channels, *tile.window_shape)
        if tuple(prediction.shape) != expected:
            raise ValueError(
                f"prediction for tile {tile.index} must have shape {expected}, got {tuple(prediction.shape)}"
            )
        weights = _weights_on(self._sum.device, tile.window_shape, self.halo)
        if isinstance(prediction, np.ndarray):
            prediction = as_tensor(prediction).to(torch.float32)
        self._sum[(slice(None), *tile.window)] += prediction.to(self._sum.device) * weights
        self._weight[tile.window] += weights

    def result(self) -> torch.Tensor:
        """The blended float32 (C, Y, X) image, where the sums are kept (``device``).

        Raises:
            ValueError: if some pixel was covered by no window.
        """
        missing = int((self._weight == 0).sum())
        if missing:
            raise ValueError(f"{missing} pixels are covered by no window; add a prediction for every tile")
        return self._sum / self._weight


def blend_tiles(
    tiles: Sequence[Tile],
    predictions: Iterable[np.ndarray],
    image_shape: Sequence[int],
    halo: int | Sequence[int],
) -> np.ndarray:
    """Blend window predictions (C, wy, wx), one per tile in the same order, into a (C, Y, X) image."""
    blender: TileBlender | None = None
    for tile, prediction in zip(tiles, predictions, strict=True):
        if blender is None:
            blender = TileBlender(image_shape, halo, num_channels=prediction.shape[0])
        blender.add(tile, prediction)
    if blender is None:
        raise ValueError("blend_tiles needs at least one tile")
    return blender.result().numpy()


def reflect_indices(size: int, length: int) -> np.ndarray:
    """Indices into an axis of ``size`` that extend it to ``length`` by reflection (edge not repeated,
    as numpy's ``mode="reflect"``, repeating as often as needed); an axis of size 1 is repeated."""
    positions = np.arange(length)
    if size == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (size - 1)
    folded = positions % period
    return np.where(folded < size, folded, period - folded).astype(np.int64)


@lru_cache(maxsize=64)
def _reflect_indices_on(size: int, length: int, device: torch.device) -> torch.Tensor:
    """:func:`reflect_indices` on ``device``, copied there once (a GPU would wait for each copy)."""
    return torch.from_numpy(reflect_indices(size, length)).to(device)


def pad_to_window(image: ArrayT, window_shape: int | Sequence[int]) -> ArrayT:
    """Reflect-pad the last two axes (Y, X) of ``image`` (numpy, or torch on any device) up to at least
    ``window_shape``.

    Padding is added after the data (bottom and right) so :func:`crop_from_window` only needs the
    original size. Axes already at least as large as the window are left unchanged. Leading axes (e.g.
    channels) are never padded. Images of size 1 along an axis are repeated (reflection of one pixel).
    """
    target = _as_pair(window_shape, "window_shape", 1)
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 axes (..., Y, X), got shape {tuple(image.shape)}")
    for axis, size in ((-2, target[0]), (-1, target[1])):
        if image.shape[axis] < size:
            if isinstance(image, torch.Tensor):
                indices = _reflect_indices_on(image.shape[axis], size, image.device)
                image = image.index_select(image.ndim + axis, indices)
            else:
                image = image.take(reflect_indices(image.shape[axis], size), axis=axis)
    return image


def crop_from_window(prediction: ArrayT, original_shape: Sequence[int]) -> ArrayT:
    """Undo :func:`pad_to_window`: the top-left (Y, X) crop of the last two axes of ``prediction``.

    ``original_shape`` may be the full shape of the unpadded input; only its last two entries are used.
    """
    if len(original_shape) < 2:
        raise ValueError(f"original_shape must end with (Y, X), got {tuple(original_shape)}")
    size_y, size_x = _as_pair(tuple(original_shape)[-2:], "original_shape", 1)
    if prediction.shape[-2] < size_y or prediction.shape[-1] < size_x:
        raise ValueError(f"prediction of shape {prediction.shape} is smaller than ({size_y}, {size_x})")
    return prediction[..., :size_y, :size_x]


@dataclass(frozen=True)
class ZBlock:
    """One block of :func:`z_blocks`: slices along z, all with explicit start and stop.

    Attributes:
        index: position of the block along z.
        write: the slices this block owns and writes; the ``write`` ranges partition the volume.
        read_forward: slices to run a forward (increasing z) propagation over: up to ``overlap``
            warm-up slices *before* ``write``, then ``write``. The first :attr:`forward_warmup` outputs
            only fill the memory bank and are discarded.
        read_backward: slices to run a backward (decreasing z) propagation over: ``write`` plus up to
            ``overlap`` warm-up slices *after* it. Iterate it in reverse; the first
            :attr:`backward_warmup` outputs (the highest z) are discarded.
    """

    index: int
    write: slice
    read_forward: slice
    read_backward: slice

    def __hash__(self) -> int:
        return hash((self.index, _bounds(self.write, self.read_forward, self.read_backward)))

    @property
    def read(self) -> slice:
        """Union of both read ranges: what to load to run both passes from one read."""
        return slice(self.read_forward.start, self.read_backward.stop)

    @property
    def forward_warmup(self) -> int:
        """Number of warm-up slices before ``write`` (fewer than ``overlap`` at the volume start)."""
        return self.write.start - self.read_forward.start

    @property
    def backward_warmup(self) -> int:
        """Number of warm-up slices after ``write`` (fewer than ``overlap`` at the volume end)."""
        return self.read_backward.stop - self.write.stop


@lru_cache(maxsize=64)
def _z_blocks(num_slices: int, block_size: int, overlap: int) -> tuple[ZBlock, ...]:
    blocks = []
    for index, start in enumerate(range(0, num_slices, block_size)):
        stop = min(start + block_size, num_slices)
        blocks.append(
            ZBlock(
                index=index,
                write=slice(start, stop),
                read_forward=slice(max(start - overlap, 0), stop),
                read_backward=slice(start, min(stop + overlap, num_slices)),
            )
        )
    return tuple(blocks)


def z_blocks(num_slices: int, block_size: int, overlap: int) -> tuple[ZBlock, ...]:
    """Split ``num_slices`` z-slices into consecutive blocks for distributed or resumable processing.

    Blocks own ``block_size`` slices each (the last one possibly fewer); their ``write`` ranges
    partition ``[0, num_slices)``. Propagation with a memory bank needs context from preceding slices,
    so each block also reads ``overlap`` warm-up slices before it (forward pass) and after it (backward
    pass), clipped at the volume ends. Warm-up outputs belong to the neighbouring block and are never
    written, so blocks are independent. With ``overlap`` at least the memory-bank length, a block's
    memory is filled from real neighbouring slices instead of starting empty.

    Raises:
        ValueError: unless ``num_slices`` and ``block_size`` are positive and ``overlap >= 0``.
    """
    return _z_blocks(
        _as_int(num_slices, "num_slices", 1),
        _as_int(block_size, "block_size", 1),
        _as_int(overlap, "overlap", 0),
    )
