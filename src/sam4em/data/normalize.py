"""Percentile intensity normalisation of EM images and volumes.

EM intensities vary between and within data sets (detector gain, staining, section
thickness), so images are mapped to ~[0, 1] between a low and a high percentile rather than
by dtype range. For a whole volume the percentiles are estimated once from a sample of
slices (:func:`volume_percentiles`) and then applied to every crop, so that all crops of a
volume share one mapping.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from sam4em.data.tensors import as_tensor

# Enough pixels for stable 1st/99.5th percentiles without holding whole slices of a
# 4096² volume in memory.
_MAX_SAMPLES_PER_SLICE = 1 << 18


def _finite_values(image: np.ndarray) -> np.ndarray:
    values = image.reshape(-1)
    if np.issubdtype(values.dtype, np.floating):
        values = values[np.isfinite(values)]
    return values


def _subsample(values: np.ndarray, limit: int) -> np.ndarray:
    step = max(1, values.size // limit)
    return values[::step]


def percentile_normalize(
    image: npt.ArrayLike,
    low: float = 1.0,
    high: float = 99.5,
    bounds: tuple[float, float] | None = None,
    clip: bool = True,
) -> np.ndarray:
    """Map ``image`` (any shape, e.g. (Y, X) or (Z, Y, X)) to float32 in ~[0, 1].

    The ``low`` and ``high`` percentiles of the finite values (or the given ``bounds``,
    e.g. from :func:`volume_percentiles`) go to 0 and 1, as :func:`scale_to_unit` maps them.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    array = np.asarray(image)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"image must be numeric, got dtype {array.dtype}")
    data = np.ascontiguousarray(array, dtype=np.float32)
    if bounds is None:
        values = _finite_values(data)
        lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 0.0)
        bounds = (float(lo), float(hi))
    return scale_to_unit(as_tensor(data), bounds, clip=clip).numpy()


def scale_to_unit(image: torch.Tensor, bounds: tuple[float, float], clip: bool = True) -> torch.Tensor:
    """``image`` (any shape and numeric dtype, on any device) as float32 with ``bounds`` (lo, hi) at 0 and 1.

    With ``clip`` values outside are clipped. NaN and ±Inf are replaced (NaN → 0, +Inf → 1, -Inf → 0)
    with a ``RuntimeWarning``, never propagated. Bounds with no contrast (hi <= lo) give zeros: a
    constant image carries nothing to stretch, and zeros keep downstream maths finite. This is where
    `sam4em segment` normalises, on the model's device, so raw slices cross to a GPU in their own dtype.
    """
    data = image.to(torch.float32)
    # Counted after the cast: float64 values beyond float32's range become infinite there.
    nonfinite = int((~torch.isfinite(data)).sum()) if image.is_floating_point() else 0
    if nonfinite:
        warnings.warn(
            f"image has {nonfinite} NaN/Inf values; replacing NaN and -Inf with 0, +Inf with 1",
            RuntimeWarning,
            stacklevel=3,
        )
    lo, hi = (float(v) for v in bounds)
    scale = hi - lo
    if not np.isfinite(scale) or scale <= 0.0:
        return torch.zeros_like(data)
    out = (data - lo) / scale
    if clip:
        out.clamp_(0.0, 1.0)
    return torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0) if nonfinite else out


def volume_percentiles(
    volume: Any,
    low: float = 1.0,
    high: float = 99.5,
    max_slices: int = 16,
    z_range: tuple[int, int] | None = None,
) -> tuple[float, float]:
    """The ``low`` and ``high`` intensity percentiles of a (Z, Y, X) volume, from a sample.

    Reads at most ``max_slices`` evenly spaced slices (``volume[z]``) of a lazy volume and a
    strided subset of each, so it never loads the whole volume. ``z_range`` (start, stop)
    restricts the sample to a split's slices. Non-finite values are skipped. Returns
    ``(0.0, 0.0)`` when the sample holds no finite value.
    """
    if len(volume.shape) != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {tuple(volume.shape)}")
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    start, stop = z_range if z_range is not None else (0, int(volume.shape[0]))
    if not 0 <= start < stop <= volume.shape[0]:
        raise ValueError(f"z_range {z_range} is outside the volume's {volume.shape[0]} slices")
    zs = np.unique(np.linspace(start, stop - 1, min(max_slices, stop - start)).round().astype(int))
    samples = [_subsample(_finite_values(np.asarray(volume[int(z)])), _MAX_SAMPLES_PER_SLICE) for z in zs]
    values = np.concatenate(samples)
    if values.dtype == bool:
        raise ValueError(
            f"{getattr(volume, 'path', 'volume')}: holds a boolean volume (a mask?), not an EM image; "
            "pass the grey-value image (or store the volume as uint8)"
        )
    if values.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(values.astype(np.float64), [low, high])
    return float(lo), float(hi)
