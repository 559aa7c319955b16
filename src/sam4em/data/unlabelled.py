"""Random crops of unlabelled EM volumes, for self-supervised pretraining (`sam4em pretrain`).

A volume is named ``PATH[:KEY][@Z0-Z1]`` (``stack.h5:raw@0-7``: slices 0..6 of dataset ``raw``), in any
format `open_volume` reads. Crops are read lazily (only the crop leaves the file), so volumes of any
size work. Several volumes are mixed with equal probability per volume, whatever their size, so a
small stack of the target tissue is not drowned by a large one of another.

Each item is a pure function of ``(seed, index)``: a resumed pretraining run reads the same crops.
Items: ``image`` (1, S, S) float32 in ~[0, 1] (per-volume percentile normalisation, as training and
inference use), randomly flipped and rotated by multiples of 90 degrees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sam4em.data.handles import ProcessHandles
from sam4em.data.normalize import percentile_normalize, volume_percentiles

_Z_RANGE = re.compile(r"^(?P<spec>.+)@(?P<z0>\d+)-(?P<z1>\d+)$")


@dataclass(frozen=True)
class UnlabelledVolume:
    """One unlabelled (Z, Y, X) volume: path, optional container key and z-range (start, stop)."""

    path: str
    key: str | None = None
    z_range: tuple[int, int] | None = None

    @classmethod
    def parse(cls, spec: str) -> UnlabelledVolume:
        """``PATH[:KEY][@Z0-Z1]`` -> volume; the z-range is (Z0, Z1), Z1 exclusive."""
        from sam4em.io import parse_path_key

        z_range = None
        if match := _Z_RANGE.match(spec):
            spec, z_range = match["spec"], (int(match["z0"]), int(match["z1"]))
        path, key = parse_path_key(spec)
        return cls(path=path, key=key, z_range=z_range)

    def __str__(self) -> str:
        text = self.path + (f":{self.key}" if self.key else "")
        return text + (f"@{self.z_range[0]}-{self.z_range[1]}" if self.z_range else "")


@dataclass(frozen=True)
class _Info:
    shape: tuple[int, int, int]
    z_range: tuple[int, int]
    bounds: tuple[float, float]


class UnlabelledCrops(Dataset[dict[str, torch.Tensor]]):
    """``samples`` random (1, S, S) crops from `volumes` (see the module docstring)."""

    def __init__(self, volumes: list[UnlabelledVolume], *, crop_size: int, samples: int, seed: int = 0) -> None:
        if not volumes:
            raise ValueError("pretraining needs at least one volume")
        self.volumes = list(volumes)
        self.crop_size = crop_size
        self.samples = samples
        self.seed = seed
        self._handles: ProcessHandles[Any] = ProcessHandles()
        self.info = [self._inspect(i) for i in range(len(self.volumes))]

    def __len__(self) -> int:
        return self.samples

    def _volume(self, index: int) -> Any:
        from sam4em.io import open_volume

        volume = self.volumes[index]
        return self._handles.get(index, lambda: open_volume(volume.path, key=volume.key))

    def _inspect(self, index: int) -> _Info:
        volume, spec = self._volume(index), self.volumes[index]
        if len(volume.shape) != 3:
            raise ValueError(f"{spec}: expected a (Z, Y, X) volume, got shape {tuple(volume.shape)}; pass the gray image volume")
        depth, height, width = (int(n) for n in volume.shape)
        shape = (depth, height, width)
        z_range = spec.z_range or (0, shape[0])
        if not 0 <= z_range[0] < z_range[1] <= shape[0]:
            raise ValueError(f"{spec}: z-range {z_range[0]}-{z_range[1]} is outside its {shape[0]} slices; fix the @Z0-Z1 suffix")
        return _Info(shape, z_range, volume_percentiles(volume, z_range=z_range))

    def crop(self, index: int) -> np.ndarray:
        """Item `index` as a (S, S) float32 array in ~[0, 1], before flips."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        source = int(rng.integers(len(self.volumes)))
        info, size = self.info[source], self.crop_size
        z = int(rng.integers(*info.z_range))
        _, height, width = info.shape
        y0 = int(rng.integers(max(1, height - size + 1)))
        x0 = int(rng.integers(max(1, width - size + 1)))
        block = np.asarray(self._volume(source)[z, y0 : y0 + size, x0 : x0 + size])
        if block.shape != (size, size):  # a slice smaller than the crop: reflect to fill it
            block = np.pad(block, [(0, size - n) for n in block.shape], mode="reflect")
        image = percentile_normalize(block, bounds=info.bounds).astype(np.float32)
        return np.ascontiguousarray(np.rot90(image, int(rng.integers(4)))[:, :: 1 - 2 * int(rng.integers(2))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.samples:
            raise IndexError(f"index {index} out of range for {self.samples} samples")
        return {"image": torch.from_numpy(self.crop(index))[None]}
