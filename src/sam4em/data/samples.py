"""Torch datasets of random crops from EM volumes, for the two training stages.

* :class:`SliceCropDataset` yields 2D crops (stage 1, per-slice training):
  ``image`` (1, H, W) float32, ``targets`` (C, H, W) float32, ``valid`` (H, W) bool.
* :class:`ClipDataset` yields K consecutive slices (stage 2, memory attention):
  ``image`` (K, 1, H, W) float32, ``targets`` (K, C, H, W) float32, ``valid`` (K, H, W) bool.

Both read from one or many :class:`VolumeSource` (image and label volume, class mapping,
the z-range of the split). Volumes are (Z, Y, X) and are read lazily: only the crop is
read. Each item is a pure function of ``(seed, epoch, index)``: its generator is derived
from ``np.random.SeedSequence([seed, epoch, index])``, so DataLoader workers, restarts and
resumes see identical samples. Call :meth:`set_epoch` before each epoch; with
``persistent_workers=True`` the workers keep their own copy of the dataset and do not see
it, so keep the default ``persistent_workers=False`` or build a new DataLoader per epoch.

With probability ``p_fg`` a crop is centred on a foreground voxel of a randomly chosen class
(found on a subsampled grid once per source), so that rare small structures such as
synapses are seen often enough; otherwise the crop position is uniform. Crops larger than
the slice are reflect-padded and the padding is marked invalid.

Sparse annotation: a source's ``labelled_slices`` names its annotated slices. Crops are drawn
around them (clips contain at least one, the other slices of a clip serve as memory context) and
``valid`` is False on every unannotated slice, so only annotated slices give loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sam4em.data.augment import AugmentConfig
from sam4em.data.crop_sampling import RandomCropDataset
from sam4em.data.volume_source import VolumeSource, resolve_labelled_slices

__all__ = ["ClipDataset", "SliceCropDataset", "VolumeSource", "resolve_labelled_slices"]


class SliceCropDataset(RandomCropDataset):
    """Random 2D crops for stage-1 (per-slice) training.

    Each item is a dict: ``image`` (1, H, W) float32 normalised to ~[0, 1], ``targets``
    (C, H, W) float32 binary, ``valid`` (H, W) bool (False in padding and on ignore codes),
    ``source`` (int, index into ``sources``) and ``z`` (int, the slice read).

    Args:
        sources: one or many volumes (all with the same class names).
        crop_size: H = W, or (H, W).
        samples_per_epoch: ``len(dataset)``.
        p_fg: probability of centring a crop on foreground of a random class.
        augment: augmentation config; ``None`` disables augmentation.
        seed: base seed; items depend only on (seed, epoch, index).
        fg_stride: y/x stride of the grid foreground points are collected on.
        fg_z_stride: z stride of that grid (raise it for very deep volumes).
        max_fg_points: cap on stored points per class and source (evenly thinned).
        percentiles: (low, high) intensity percentiles mapped to 0 and 1 per volume.
        percentile_slices: slices sampled per volume to estimate those percentiles.
    """

    def __init__(
        self,
        sources: VolumeSource | Sequence[VolumeSource],
        crop_size: int | tuple[int, int] = 256,
        samples_per_epoch: int = 1000,
        p_fg: float = 0.5,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        fg_stride: int = 8,
        fg_z_stride: int = 1,
        max_fg_points: int = 200_000,
        percentiles: tuple[float, float] = (1.0, 99.5),
        percentile_slices: int = 16,
    ) -> None:
        super().__init__(
            sources,
            crop_size,
            1,
            samples_per_epoch,
            p_fg,
            augment,
            seed,
            fg_stride,
            fg_z_stride,
            max_fg_points,
            percentiles,
            percentile_slices,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, z, image, targets, valid = self._sample(index)
        return {
            "image": torch.from_numpy(image),
            "targets": torch.from_numpy(targets[:, 0]),
            "valid": torch.from_numpy(valid[0]),
            "source": source,
            "z": int(z[0]),
        }


class ClipDataset(RandomCropDataset):
    """Random clips of K consecutive slices for stage-2 (memory attention) training.

    Each item is a dict: ``image`` (K, 1, H, W) float32 normalised to ~[0, 1], ``targets``
    (K, C, H, W) float32 binary, ``valid`` (K, H, W) bool, ``source`` (int) and ``z``
    (K,) int64 tensor, the slice index of each clip slice (descending when the
    augmentation reversed the order). Clips never leave the source's z-range.

    Arguments as for :class:`SliceCropDataset`, plus ``clip_length`` (K).
    """

    def __init__(
        self,
        sources: VolumeSource | Sequence[VolumeSource],
        clip_length: int = 8,
        crop_size: int | tuple[int, int] = 256,
        samples_per_epoch: int = 1000,
        p_fg: float = 0.5,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        fg_stride: int = 8,
        fg_z_stride: int = 1,
        max_fg_points: int = 200_000,
        percentiles: tuple[float, float] = (1.0, 99.5),
        percentile_slices: int = 16,
    ) -> None:
        super().__init__(
            sources,
            crop_size,
            clip_length,
            samples_per_epoch,
            p_fg,
            augment,
            seed,
            fg_stride,
            fg_z_stride,
            max_fg_points,
            percentiles,
            percentile_slices,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, z, image, targets, valid = self._sample(index)
        return {
            "image": torch.from_numpy(image[:, None]),
            "targets": torch.from_numpy(np.ascontiguousarray(targets.swapaxes(0, 1))),
            "valid": torch.from_numpy(valid),
            "source": source,
            "z": torch.from_numpy(z.astype(np.int64)),
        }
