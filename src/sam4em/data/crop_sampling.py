"""Drawing random crop windows from EM volumes: the sampling shared by the training datasets.

See :mod:`sam4em.data.samples` for what the datasets yield and how items stay reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from sam4em.data.augment import AugmentConfig, augment_clip
from sam4em.data.handles import ProcessHandles
from sam4em.data.normalize import percentile_normalize, volume_percentiles
from sam4em.data.volume_source import VolumeSource, labelled_in


@dataclass(frozen=True)
class _SourceInfo:
    """Per-source facts computed once (and pickled to workers): shape, z-range, percentiles."""

    shape: tuple[int, int, int]
    z_range: tuple[int, int]
    bounds: tuple[float, float]
    labelled: tuple[int, ...] | None  # annotated slices inside z_range, sorted; None: all


def _window_start(centre: int, size: int, extent: int) -> int:
    """First index of a ``size`` window around ``centre`` inside ``[0, extent)``.

    When the extent is smaller than the window, the window is centred on the extent (the
    rest is padding).
    """
    if extent >= size:
        return int(np.clip(centre - size // 2, 0, extent - size))
    return -((size - extent) // 2)


def _read_padded(
    volume: Any, z0: int, depth: int, y0: int, x0: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``volume[z0:z0+depth, y0:y0+height, x0:x0+width]`` with reflect padding.

    Returns the (depth, height, width) array and a bool mask that is False in the padding.
    """
    _, size_y, size_x = volume.shape
    ys, ye = max(0, y0), min(size_y, y0 + height)
    xs, xe = max(0, x0), min(size_x, x0 + width)
    block = np.asarray(volume[z0 : z0 + depth, ys:ye, xs:xe])
    pad = ((0, 0), (ys - y0, y0 + height - ye), (xs - x0, x0 + width - xe))
    inside = np.zeros((depth, height, width), dtype=bool)
    inside[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = True
    if any(before or after for before, after in pad):
        # reflect needs at least two samples along an axis; a one-pixel axis can only repeat.
        mode: Literal["reflect", "edge"] = "reflect" if min(block.shape[1:]) > 1 else "edge"
        block = np.pad(block, pad, mode=mode)
    return block, inside


class RandomCropDataset(Dataset[dict[str, Any]]):
    """Shared sampling logic of :class:`~sam4em.data.samples.SliceCropDataset` and
    :class:`~sam4em.data.samples.ClipDataset`: items are (K, H, W) windows drawn by ``_sample``."""

    def __init__(
        self,
        sources: VolumeSource | Sequence[VolumeSource],
        crop_size: int | tuple[int, int],
        clip_length: int,
        samples_per_epoch: int,
        p_fg: float,
        augment: AugmentConfig | None,
        seed: int,
        fg_stride: int,
        fg_z_stride: int,
        max_fg_points: int,
        percentiles: tuple[float, float],
        percentile_slices: int,
    ) -> None:
        self.sources: tuple[VolumeSource, ...] = (
            (sources,) if isinstance(sources, VolumeSource) else tuple(sources)
        )
        if not self.sources:
            raise ValueError("need at least one VolumeSource")
        names = {source.mapping.names for source in self.sources}
        if len(names) > 1:
            raise ValueError(f"all sources must map to the same classes, got {sorted(names)}")
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be a positive int or (H, W), got {crop_size}")
        if clip_length < 1 or samples_per_epoch < 1 or fg_stride < 1 or fg_z_stride < 1 or max_fg_points < 1:
            raise ValueError(
                "clip_length, samples_per_epoch, fg_stride, fg_z_stride and max_fg_points must be >= 1"
            )
        if not 0.0 <= p_fg <= 1.0:
            raise ValueError(f"p_fg must be in [0, 1], got {p_fg}")
        self.clip_length = clip_length
        self.samples_per_epoch = samples_per_epoch
        self.p_fg = p_fg
        self.augment = AugmentConfig.disabled() if augment is None else augment
        self.seed = seed
        self.fg_stride = fg_stride
        self.fg_z_stride = fg_z_stride
        self.max_fg_points = max_fg_points
        self.percentiles = percentiles
        self.percentile_slices = percentile_slices
        self.epoch = 0
        self._info: list[_SourceInfo] | None = None
        self._foreground: dict[int, tuple[np.ndarray, ...]] = {}
        self._handles: ProcessHandles[tuple[Any, Any]] = ProcessHandles()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.sources[0].mapping.names

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; items are a function of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def _volumes(self, index: int) -> tuple[Any, Any]:
        from sam4em.io import open_volume  # deferred: workers import the readers when they open

        source = self.sources[index]

        def open_pair() -> tuple[Any, Any]:
            image = open_volume(source.image_path, key=source.image_key)
            # A Zarr chunk lost from the labels would train as background: refused unless allowed.
            label = open_volume(source.label_path, key=source.label_key, allow_missing_chunks=source.allow_missing_chunks)
            if tuple(image.shape) != tuple(label.shape) or len(image.shape) != 3:
                raise ValueError(
                    f"image {source.image_path} {tuple(image.shape)} and labels {source.label_path} "
                    f"{tuple(label.shape)} must be (Z, Y, X) of the same shape"
                )
            return image, label

        return self._handles.get(index, open_pair)

    def _source_info(self) -> list[_SourceInfo]:
        if self._info is None:
            info = []
            for index, source in enumerate(self.sources):
                image, _ = self._volumes(index)
                depth, height, width = (int(n) for n in image.shape)  # (Z, Y, X), checked on opening
                shape = (depth, height, width)
                z_range = source.z_range or (0, shape[0])
                if not 0 <= z_range[0] < z_range[1] <= shape[0]:
                    raise ValueError(
                        f"z_range {z_range} of {source.image_path} is outside its {shape[0]} slices"
                    )
                if z_range[1] - z_range[0] < self.clip_length:
                    raise ValueError(
                        f"z_range {z_range} of {source.image_path} is shorter than clip_length {self.clip_length}"
                    )
                bounds = volume_percentiles(
                    image, *self.percentiles, max_slices=self.percentile_slices, z_range=z_range
                )
                info.append(_SourceInfo(shape, z_range, bounds, labelled_in(source, z_range)))
            self._info = info
        return self._info

    def _foreground_points(self, index: int) -> tuple[np.ndarray, ...]:
        """Per class, (N, 3) int32 (z, y, x) foreground voxels on the subsampled grid."""
        if index not in self._foreground:
            _, label = self._volumes(index)
            mapping = self.sources[index].mapping
            info = self._source_info()[index]
            step = self.fg_stride
            per_class: list[list[np.ndarray]] = [[] for _ in mapping.names]
            # Foreground of unannotated slices is unknown: crops are centred on annotated ones only.
            for z in info.labelled or range(*info.z_range, self.fg_z_stride):
                # Whole slices are read and subsampled here: strided reads of chunked files
                # would read the same chunks anyway.
                targets = mapping.apply(np.asarray(label[z])[::step, ::step], dtype=np.uint8)
                for channel, mask in enumerate(targets):
                    ys, xs = np.nonzero(mask)
                    if ys.size:
                        per_class[channel].append(
                            np.stack([np.full_like(ys, z), ys * step, xs * step], axis=1).astype(np.int32)
                        )
            points = []
            for chunks in per_class:
                coords = np.concatenate(chunks) if chunks else np.zeros((0, 3), dtype=np.int32)
                if len(coords) > self.max_fg_points:
                    coords = coords[:: -(-len(coords) // self.max_fg_points)]
                points.append(coords)
            self._foreground[index] = tuple(points)
        return self._foreground[index]

    def prepare(self) -> None:
        """Compute shapes, percentiles and foreground points now (e.g. in the main process).

        Without it every DataLoader worker computes them on its first item; with it they are
        computed once and shipped to the workers with the dataset.
        """
        for index in range(len(self.sources)):
            self._foreground_points(index)

    def _draw_window(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Draw (source, z_start, y0, x0) of a crop."""
        info = self._source_info()
        sizes = np.array(
            [(i.z_range[1] - i.z_range[0]) * i.shape[1] * i.shape[2] for i in info], dtype=np.float64
        )
        source = int(rng.choice(len(info), p=sizes / sizes.sum()))
        (start, stop), (_, size_y, size_x) = info[source].z_range, info[source].shape
        height, width = self.crop_size
        depth = self.clip_length
        if rng.random() < self.p_fg:
            points = self._foreground_points(source)
            present = [channel for channel, coords in enumerate(points) if len(coords)]
            if present:
                coords = points[present[int(rng.integers(len(present)))]]
                z, y, x = (int(v) for v in coords[int(rng.integers(len(coords)))])
                # The grid point stands for a stride×stride cell: jitter within it.
                y = min(y + int(rng.integers(self.fg_stride)), size_y - 1)
                x = min(x + int(rng.integers(self.fg_stride)), size_x - 1)
                z_start = int(np.clip(z - depth // 2, start, stop - depth))
                return source, z_start, _window_start(y, height, size_y), _window_start(x, width, size_x)
        labelled = info[source].labelled
        if labelled is not None:
            # A window around a random annotated slice, anywhere it fits: the others are memory context.
            z = int(rng.choice(labelled))
            z_start = int(rng.integers(max(start, z - depth + 1), min(z, stop - depth) + 1))
        else:
            z_start = int(rng.integers(start, stop - depth + 1))
        # Uniform window starts (not centres), so borders are sampled as often as the middle.
        y0 = int(rng.integers(size_y - height + 1)) if size_y >= height else _window_start(0, height, size_y)
        x0 = int(rng.integers(size_x - width + 1)) if size_x >= width else _window_start(0, width, size_x)
        return source, z_start, y0, x0

    def _sample(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw item ``index``: (source, z (K,), image (K, H, W), targets (C, K, H, W), valid (K, H, W))."""
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"index {index} out of range for {self.samples_per_epoch} samples per epoch")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        source, z_start, y0, x0 = self._draw_window(rng)
        image_volume, label_volume = self._volumes(source)
        height, width = self.crop_size
        depth = self.clip_length
        raw, inside = _read_padded(image_volume, z_start, depth, y0, x0, height, width)
        labels, _ = _read_padded(label_volume, z_start, depth, y0, x0, height, width)
        mapping = self.sources[source].mapping
        image = percentile_normalize(raw, bounds=self._source_info()[source].bounds)
        targets = mapping.apply(labels)
        valid = inside & ~mapping.ignore_mask(labels)
        z = np.arange(z_start, z_start + depth)
        labelled = self._source_info()[source].labelled
        if labelled is not None:
            valid &= np.isin(z, labelled)[:, None, None]  # no loss on unannotated slices
        clip = augment_clip(image, targets, rng, self.augment, mask=valid)
        if clip.reversed:
            z = z[::-1].copy()
        assert clip.mask is not None  # augment_clip returns a mask when given one
        return source, z, clip.image, clip.targets, clip.mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.sources)} sources, crop {self.crop_size}, K={self.clip_length}, "
            f"{self.samples_per_epoch} samples/epoch, p_fg={self.p_fg}, seed={self.seed}, epoch={self.epoch})"
        )
