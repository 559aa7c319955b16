"""Slice-consistent augmentation of EM clips.

A clip is K consecutive slices of one volume: image (K, Y, X) float32, targets (C, K, Y, X)
and an optional mask (K, Y, X). The memory-attention model relates a slice to its
neighbours, so every slice must see the *same* transform: one geometric transform (flips
and 90° rotations applied exactly, small rotation/scale and elastic deformation combined
into one sampling grid shared by all slices, the image, the targets and the mask) and one
intensity transform (brightness/contrast, gamma, blur and noise with the same parameters and
the same noise field for every slice). Independently, the slice order may be reversed, since
a volume has no preferred z direction. A 2D crop is a clip with K = 1.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seeded generator
reproduces an augmentation exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and magnitudes of the augmentations; ``enabled=False`` turns all off.

    Intensity magnitudes assume images normalised to ~[0, 1]. ``elastic_magnitude`` is the
    standard deviation (pixels) of the displacement of control points spaced
    ``elastic_spacing`` pixels apart.
    """

    enabled: bool = True
    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.3
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    p_elastic: float = 0.2
    elastic_magnitude: float = 4.0
    elastic_spacing: int = 64
    p_brightness_contrast: float = 0.5
    brightness: float = 0.1
    contrast_range: tuple[float, float] = (0.8, 1.25)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_blur: float = 0.2
    blur_sigma_range: tuple[float, float] = (0.3, 1.2)
    p_noise: float = 0.2
    noise_std_range: tuple[float, float] = (0.01, 0.05)
    p_reverse: float = 0.5

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{field.name} must be a probability in [0, 1], got {value}")
            if field.name.endswith("_range") and not (len(value) == 2 and 0.0 < value[0] <= value[1]):
                raise ValueError(f"{field.name} must be (low, high) with 0 < low <= high, got {value}")
        if self.elastic_spacing < 2:
            raise ValueError(f"elastic_spacing must be >= 2 pixels, got {self.elastic_spacing}")
        if min(self.max_rotation_deg, self.elastic_magnitude, self.brightness) < 0:
            raise ValueError("max_rotation_deg, elastic_magnitude and brightness must be >= 0")

    @classmethod
    def disabled(cls) -> AugmentConfig:
        return cls(enabled=False)

    @classmethod
    def only(cls, *names: str, **overrides: Any) -> AugmentConfig:
        """A config where only the named transforms (``"flip"``, ``"gamma"``, ...) fire, always.

        ``names`` are the ``p_*`` fields without the prefix; ``overrides`` set magnitudes.
        """
        probabilities = {f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")}
        for name in names:
            if f"p_{name}" not in probabilities:
                raise ValueError(
                    f"unknown transform {name!r}; known: {', '.join(p[2:] for p in probabilities)}"
                )
            probabilities[f"p_{name}"] = 1.0
        return cls(**{**probabilities, **overrides})


class AugmentedClip(NamedTuple):
    """Result of :func:`augment_clip`; ``reversed`` tells whether the slice order was flipped."""

    image: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    reversed: bool


def _check_shapes(image: np.ndarray, targets: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be (K, Y, X), got shape {image.shape}")
    if targets.ndim != 4 or targets.shape[1:] != image.shape:
        raise ValueError(f"targets must be (C, K, Y, X) matching image {image.shape}, got {targets.shape}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask must be (K, Y, X) matching image {image.shape}, got {mask.shape}")


def _sampling_grid(
    rng: np.random.Generator, config: AugmentConfig, height: int, width: int
) -> torch.Tensor | None:
    """One (1, Y, X, 2) grid for ``grid_sample`` (rotation, scale, elastic), or None for identity."""
    do_affine = rng.random() < config.p_affine
    do_elastic = rng.random() < config.p_elastic
    if not (do_affine or do_elastic):
        return None
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ys = torch.arange(height, dtype=torch.float64) - cy
    xs = torch.arange(width, dtype=torch.float64) - cx
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    if do_affine:
        angle = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
        scale = rng.uniform(*config.scale_range)
        cos, sin = math.cos(angle), math.sin(angle)
        # The grid holds, for each output pixel, where to read in the input: the inverse map.
        src_x = (cos * xx + sin * yy) / scale
        src_y = (-sin * xx + cos * yy) / scale
    else:
        src_x, src_y = xx, yy
    if do_elastic:
        coarse = (
            2,
            math.ceil(height / config.elastic_spacing) + 1,
            math.ceil(width / config.elastic_spacing) + 1,
        )
        control = torch.from_numpy(rng.normal(0.0, config.elastic_magnitude, size=coarse))
        displacement = F.interpolate(control[None], size=(height, width), mode="bicubic", align_corners=True)[
            0
        ]
        src_y = src_y + displacement[0]
        src_x = src_x + displacement[1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel.
    norm_x = (src_x + cx) * (2.0 / max(width - 1, 1)) - 1.0
    norm_y = (src_y + cy) * (2.0 / max(height - 1, 1)) - 1.0
    return torch.stack([norm_x, norm_y], dim=-1).to(torch.float32)[None]


def _resample(batch: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    """Resample (N, C, Y, X) with one shared grid; reflection keeps borders plausible EM."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    out = F.grid_sample(
        tensor,
        grid.expand(tensor.shape[0], -1, -1, -1),
        mode=mode,
        padding_mode="reflection",
        align_corners=True,
    )
    return out.numpy()


def _geometric(
    rng: np.random.Generator,
    config: AugmentConfig,
    image: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    height, width = image.shape[-2:]
    flip_y = rng.random() < config.p_flip
    flip_x = rng.random() < config.p_flip
    # A quarter turn would swap Y and X; on non-square crops only the half turn keeps the shape.
    turns = 0
    if rng.random() < config.p_rot90:
        turns = int(rng.integers(1, 4)) if height == width else 2
    arrays: list[np.ndarray | None] = [image, targets, mask]
    for i, array in enumerate(arrays):
        if array is None:
            continue
        if flip_y:
            array = np.flip(array, axis=-2)
        if flip_x:
            array = np.flip(array, axis=-1)
        if turns:
            array = np.rot90(array, k=turns, axes=(-2, -1))
        arrays[i] = array
    image, targets, mask = arrays  # type: ignore[assignment]

    grid = _sampling_grid(rng, config, height, width)
    if grid is None:
        return image, targets, mask
    image = _resample(image[:, None], grid, "bilinear")[:, 0]
    # Targets as (K, C, Y, X): one grid_sample batch entry per slice, classes as channels.
    targets = _resample(np.swapaxes(targets, 0, 1), grid, "nearest").swapaxes(0, 1).astype(targets.dtype)
    if mask is not None:
        mask = _resample(mask[:, None], grid, "nearest")[:, 0] > 0.5
    return image, targets, mask


def _intensity(rng: np.random.Generator, config: AugmentConfig, image: np.ndarray) -> np.ndarray:
    """Brightness/contrast, gamma, blur and noise with one parameter set for all K slices."""
    out = np.asarray(image, dtype=np.float32)
    if rng.random() < config.p_brightness_contrast:
        contrast = rng.uniform(*config.contrast_range)
        brightness = rng.uniform(-config.brightness, config.brightness)
        out = (out - 0.5) * np.float32(contrast) + np.float32(0.5 + brightness)
    if rng.random() < config.p_gamma:
        out = np.clip(out, 0.0, None) ** np.float32(rng.uniform(*config.gamma_range))
    if rng.random() < config.p_blur:
        sigma = rng.uniform(*config.blur_sigma_range)
        out = gaussian_filter(out, sigma=(0.0, sigma, sigma), mode="reflect")
    if rng.random() < config.p_noise:
        std = rng.uniform(*config.noise_std_range)
        # One field for all slices: the transform must be identical slice to slice.
        out = out + rng.normal(0.0, std, size=out.shape[-2:]).astype(np.float32)[None]
    return out.astype(np.float32, copy=False)


def augment_clip(
    image: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    mask: np.ndarray | None = None,
) -> AugmentedClip:
    """Augment a clip with one geometric and one intensity transform shared by all slices.

    Args:
        image: (K, Y, X) float32, normalised to ~[0, 1].
        targets: (C, K, Y, X) binary targets (any dtype, kept); resampled with nearest
            neighbour so they stay binary.
        rng: the only source of randomness.
        config: probabilities and magnitudes; ``None`` means the defaults.
        mask: optional (K, Y, X) bool (e.g. valid or ignore mask), resampled like targets.

    Returns:
        :class:`AugmentedClip` ``(image, targets, mask, reversed)``: new contiguous arrays of
        the input shapes (``mask`` is ``None`` when none was given) and whether the slice
        order was reversed (so callers can keep slice indices in step).
    """
    config = AugmentConfig() if config is None else config
    image = np.asarray(image, dtype=np.float32)
    targets = np.asarray(targets)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    _check_shapes(image, targets, mask)
    if not config.enabled:
        return AugmentedClip(image.copy(), targets.copy(), None if mask is None else mask.copy(), False)
    image, targets, mask = _geometric(rng, config, image, targets, mask)
    image = _intensity(rng, config, image)
    reverse = bool(rng.random() < config.p_reverse)
    if reverse:
        image, targets = image[::-1], targets[:, ::-1]
        mask = None if mask is None else mask[::-1]
    # Fresh C-ordered copies: reversed or flipped views have negative strides, which torch
    # cannot wrap, and np.ascontiguousarray keeps them on length-1 axes.
    return AugmentedClip(
        np.array(image, order="C"),
        np.array(targets, order="C"),
        None if mask is None else np.array(mask, order="C"),
        reverse,
    )
