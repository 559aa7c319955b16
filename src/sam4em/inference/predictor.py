"""Slice-by-slice prediction with tiles and memory: the one place where the model meets the data.

A slice larger than the model's input is cut into windows (`tile_grid`); all windows of one slice go
through the model together as a batch, and the memory bank of that batch holds one entry per window,
so z-propagation happens inside each tile column. Window predictions are blended with smooth
weights (`TileBlender`), so no seams show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sam4em.data.normalize import percentile_normalize
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
    """Predicts class probabilities (C, Y, X) for consecutive slices of one volume in one z order."""

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

    def reset(self) -> None:
        """Forget the memory: the next slice starts a new volume (or a new pass)."""
        self.banks = [self.model.new_memory_bank() for _ in self.batches]

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One raw slice (Y, X) -> float32 probabilities (C, Y, X), advancing every tile's memory."""
        if tuple(image.shape) != self.plan.image_shape:
            raise ValueError(f"slice of shape {tuple(image.shape)} does not match the plan's {self.plan.image_shape}")
        normalized = percentile_normalize(image, bounds=self.bounds)
        blender = TileBlender(self.plan.image_shape, self.plan.halo, self.model.num_classes)
        window = self.plan.window
        for batch, bank in zip(self.batches, self.banks, strict=True):
            crops = [pad_to_window(normalized[tile.window], window) for tile in batch]
            pixels = torch.from_numpy(np.stack(crops)[:, None]).to(self.device)
            context = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()
            with context:
                logits = self.model(pixels, bank).logits
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            for tile, prob in zip(batch, probs, strict=True):
                blender.add(tile, crop_from_window(prob, tile.window_shape))
        return blender.result()


def predict_slices(
    volume,
    predictor: SlicePredictor,
    z_order: Iterable[int],
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (z, probabilities (C, Y, X)) for `volume[z]` in `z_order`, from an empty memory."""
    predictor.reset()
    for z in z_order:
        yield z, predictor(np.asarray(volume[z]))
