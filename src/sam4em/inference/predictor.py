"""Slice-by-slice prediction with tiles and memory: the one place where the model meets the data.

A slice larger than the model's input is cut into windows (`tile_grid`); all windows of one slice go
through the model together as a batch, and the memory bank of that batch holds one entry per window,
so z-propagation happens inside each tile column. Window predictions are blended with smooth
weights (`TileBlender`), so no seams show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sam4em.data.normalize import scale_to_unit
from sam4em.data.tensors import as_tensor
from sam4em.inference.tiling import Tile, TileBlender, crop_from_window, pad_to_window, tile_grid
from sam4em.models.info import SegmentationModel

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TilingPlan:
    """How a (Y, X) slice is cut for a model whose input is `window` pixels square."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    window: int

    @property
    def tiles(self) -> tuple[Tile, ...]:
        return tile_grid(self.image_shape, self.tile_shape, self.halo)


def plan_tiling(
    image_shape: tuple[int, int],
    window: int,
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
) -> TilingPlan:
    """Default halo: 1/8 of the window per side; default tile: the window minus both halos."""
    halo = (window // 8, window // 8) if halo is None else yx_pair(halo, "halo")
    tile_shape = (
        (window - 2 * halo[0], window - 2 * halo[1]) if tile_shape is None else yx_pair(tile_shape, "tile_shape")
    )
    if min(tile_shape) < 1 or min(halo) < 0:
        raise ValueError(
            f"tile {tuple(tile_shape)} must be positive and halo {tuple(halo)} non-negative; "
            "pass e.g. --tile 48 --halo 8"
        )
    for axis, (t, h) in enumerate(zip(tile_shape, halo, strict=True)):
        if t + 2 * h > window:
            raise ValueError(
                f"tile {tuple(tile_shape)} + 2 x halo {tuple(halo)} must fit the model's {window}-pixel input "
                f"(axis {'YX'[axis]}: {t} + 2 x {h} > {window}); use a smaller --tile or --halo"
            )
    image_y, image_x = image_shape  # a tuple, list or array of (Y, X)
    return TilingPlan(image_shape=(image_y, image_x), tile_shape=tile_shape, halo=halo, window=window)


def yx_pair(value: Sequence[int], name: Literal["tile_shape", "halo"]) -> tuple[int, int]:
    """``value`` (a tuple, list or array of two in-plane sizes) as a (Y, X) tuple; refuses any other
    length with a one-line ValueError naming ``name`` and the fix."""
    items = tuple(value)
    if len(items) != 2:
        flag, size = ("--tile", 48) if name == "tile_shape" else ("--halo", 8)
        raise ValueError(
            f"{name} must be 2 sizes (Y, X), got {items!r}; "
            f"pass e.g. {name}=({size}, {size}) ({flag} {size} {size}, or {flag} {size} for both axes)"
        )
    return items[0], items[1]


class SlicePredictor:
    """Predicts class probabilities (C, Y, X) for consecutive slices of one volume in one z order, or
    of several independent z-streams advanced in lockstep (`predict_streams`).

    Each stream has its own memory; a model call holds one tile batch (``batch_size`` windows) of every
    active stream, so K streams put K times as many windows through each call (what keeps a GPU busy)
    while each stream sees exactly the memory it would see alone.
    """

    def __init__(
        self,
        model: SegmentationModel,
        plan: TilingPlan,
        *,
        intensity_bounds: tuple[float, float],
        batch_size: int = 8,
        device: torch.device | str | None = None,
        autocast: bool = True,
    ) -> None:
        self.model = model.eval()
        self.plan = plan
        self.bounds = intensity_bounds
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = max(1, batch_size)
        tiles = plan.tiles
        self.batches = [tiles[i : i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]
        self.autocast = autocast and self.device.type == "cuda"
        self.reset()

    def reset(self, streams: int = 1) -> None:
        """Forget the memory: the next call starts ``streams`` new volumes (or new passes)."""
        self.streams = streams
        self.banks = [self.model.new_memory_bank() for _ in self.batches]

    def keep_streams(self, keep: Sequence[bool]) -> None:
        """Drop the streams where ``keep`` (one per active stream) is False, with their memory."""
        if len(keep) != self.streams:
            raise ValueError(f"{len(keep)} flags for {self.streams} active streams")
        for batch, bank in zip(self.batches, self.banks, strict=True):
            if bank is not None:
                bank.keep_windows(torch.tensor(keep).repeat_interleave(len(batch)))
        self.streams = sum(keep)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The next raw slice (Y, X) of every active stream -> float32 probabilities (C, Y, X) each, on the
        predictor's device."""
        if len(images) != self.streams:
            raise ValueError(f"{len(images)} slices for {self.streams} active streams")
        for image in images:
            if tuple(image.shape) != self.plan.image_shape:
                raise ValueError(f"slice of shape {tuple(image.shape)} does not match the plan's {self.plan.image_shape}")
        # Normalised, cut and blended where the model runs: a raw slice crosses to a GPU once, in its
        # own dtype (a quarter of float32's bytes for uint8), and its probabilities come back once.
        normalized = [scale_to_unit(self._on_device(image), self.bounds) for image in images]
        blenders = [
            TileBlender(self.plan.image_shape, self.plan.halo, self.model.num_classes, device=self.device)
            for _ in images
        ]
        window = self.plan.window
        for batch, bank in zip(self.batches, self.banks, strict=True):
            # Stream-major: the windows of stream 0, then those of stream 1, ... (as `keep_streams` drops them).
            pixels = torch.stack([pad_to_window(slice_[tile.window], window) for slice_ in normalized for tile in batch])
            context = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()
            with context:
                logits = self.model(pixels[:, None], bank).logits
            probs = torch.sigmoid(logits.float())
            for index, prob in enumerate(probs):
                tile = batch[index % len(batch)]
                blenders[index // len(batch)].add(tile, crop_from_window(prob, tile.window_shape))
        return [blender.result() for blender in blenders]

    def _on_device(self, image: np.ndarray) -> torch.Tensor:
        """A raw slice on the predictor's device, in its own dtype where torch has it (`as_tensor`)."""
        pixels = as_tensor(image)
        if self.device.type == "cuda":  # page-locked, so the copy runs asynchronously
            pixels = pixels.pin_memory()
        return pixels.to(self.device, non_blocking=True)


def predict_slices(
    volume,
    predictor: SlicePredictor,
    z_order: Iterable[int],
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (z, probabilities (C, Y, X) on the predictor's device) for `volume[z]` in `z_order`, from an
    empty memory."""
    for _, z, probs in predict_streams(volume, predictor, [list(z_order)]):
        yield z, probs


def predict_streams(
    volume,
    predictor: SlicePredictor,
    z_orders: Sequence[Sequence[int]],
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (stream, z, probabilities (C, Y, X) on the predictor's device) for every z of every order in
    ``z_orders``, the streams advanced in lockstep from empty memories: step j predicts the j-th slice of
    every order that has one, so each stream's result is the one it gets alone (within float rounding of
    the larger batches). A stream leaves the batch, memory and all, when its order ends.

    The slices of step j + 1 are read in a background thread while step j is predicted; only that
    thread reads ``volume`` meanwhile (some readers, e.g. compressed TIFF, take one thread at a time).
    """

    def streams_at(step: int) -> list[int]:
        return [stream for stream, order in enumerate(z_orders) if step < len(order)]

    def read(step: int) -> list[np.ndarray]:
        return [np.asarray(volume[z_orders[stream][step]]) for stream in streams_at(step)]

    predictor.reset(len(z_orders))
    active = list(range(len(z_orders)))
    steps = max((len(order) for order in z_orders), default=0)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam4em-read") as reader:
        upcoming = reader.submit(read, 0)
        for step in range(steps):
            slices = upcoming.result()
            if step + 1 < steps:
                upcoming = reader.submit(read, step + 1)
            still = streams_at(step)
            if len(still) != len(active):
                predictor.keep_streams([stream in still for stream in active])
                active = still
            for stream, probs in zip(active, predictor.predict(slices), strict=True):
                yield stream, z_orders[stream][step], probs
