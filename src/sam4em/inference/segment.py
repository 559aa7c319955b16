"""`segment_volume`: the in-memory Python API for a (Z, Y, X) stack."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from sam4em.data.normalize import volume_percentiles
from sam4em.inference.postprocess import probs_to_labels
from sam4em.inference.predictor import ProgressCallback, SlicePredictor, plan_tiling, predict_slices
from sam4em.models.info import SegmentationModel

Direction = Literal["forward", "backward", "both"]


def z_orders(num_slices: int, direction: Direction) -> list[range]:
    """The passes of a direction: forward is z ascending; `both` runs forward then backward."""
    forward, backward = range(num_slices), range(num_slices - 1, -1, -1)
    orders = {"forward": [forward], "backward": [backward], "both": [forward, backward]}
    if direction not in orders:
        raise ValueError(f"direction must be forward, backward or both, got {direction!r}")
    return orders[direction]


def segment_volume(
    volume,
    model: SegmentationModel,
    *,
    direction: Direction = "both",
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    output: Literal["probs", "labels"] = "probs",
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Segment a (Z, Y, X) stack held in memory (or a lazy array-like small enough for its result).

    Returns float32 probabilities (C, Z, Y, X), or with ``output="labels"`` a uint8 class map (Z, Y, X)
    (0 background, 1..C in class order). With ``direction="both"`` the forward and backward passes
    are averaged, because the first slices of a one-way pass have no memory context. For volumes
    larger than memory use `sam4em.inference.segment_to_file`.
    """
    if len(volume.shape) == 2:
        volume = np.asarray(volume)[None]
    if len(volume.shape) != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if output not in ("probs", "labels"):
        raise ValueError(f"output must be 'probs' or 'labels', got {output!r}")
    num_slices, height, width = (int(s) for s in volume.shape)
    plan = plan_tiling((height, width), model.image_size, tile_shape, halo)
    predictor = SlicePredictor(
        model, plan, intensity_bounds=volume_percentiles(volume), batch_size=batch_size, device=device
    )
    orders = z_orders(num_slices, direction)
    probs = np.zeros((model.num_classes, num_slices, height, width), dtype=np.float32)
    done, total = 0, num_slices * len(orders)
    for order in orders:
        for z, prob in predict_slices(volume, predictor, order):
            probs[:, z] += (prob / len(orders)).cpu().numpy()
            done += 1
            if progress is not None:
                progress(done, total)
    return probs_to_labels(probs) if output == "labels" else probs
