"""From per-class probabilities to semantic labels, instances and compact storage.

Probability volumes are float arrays of shape (C, Z, Y, X): one channel per class, in class order,
values in [0, 1]. Label and instance volumes drop or keep the class axis as documented per function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed as skimage_watershed

from sam4em.data.tensors import as_tensor
from sam4em.inference.tiling import ArrayT

__all__ = [
    "from_uint8_probs",
    "probs_to_instances",
    "probs_to_labels",
    "to_uint8_probs",
]

SeedMethod = Literal["h_maxima", "peak_local_max"]


def _check_float(probs: np.ndarray | torch.Tensor, name: str = "probs") -> None:
    floating = probs.is_floating_point() if isinstance(probs, torch.Tensor) else np.issubdtype(probs.dtype, np.floating)
    if not floating:
        # Quantised (uint8) probabilities would silently compare against a 0..1 threshold.
        raise TypeError(
            f"{name} must be floating point probabilities in [0, 1], got dtype {probs.dtype}; "
            "convert uint8 storage with from_uint8_probs first"
        )


def probs_to_labels(probs: ArrayT, threshold: float = 0.5) -> ArrayT:
    """Semantic labels from per-class probabilities (numpy, or torch on any device: a GPU's
    probabilities are labelled where they are made). Numpy input is worked on in place where torch can
    take it as it is (`sam4em.data.tensors.as_tensor`), else copied once.

    Args:
        probs: float (C, Z, Y, X) probabilities, one channel per class (any number of trailing spatial
            axes is accepted); at most 255 classes.
        threshold: a class is a candidate at a voxel only if its probability is strictly greater.

    Returns:
        uint8 (Z, Y, X) of ``probs``' kind: 0 where no class exceeds the threshold, otherwise ``1 + c`` for
        the candidate class ``c`` with the highest probability; ties go to the lower class index. NaN
        never wins.
    """
    if not isinstance(probs, torch.Tensor):
        array = np.asarray(probs)
        _check_float(array)
        return probs_to_labels(as_tensor(array), threshold).numpy()
    _check_float(probs)
    if probs.ndim < 2:
        raise ValueError(f"probs must have shape (C, Z, Y, X), got {tuple(probs.shape)}")
    if probs.shape[0] > 255:
        raise ValueError(f"at most 255 classes fit in uint8 labels, got {probs.shape[0]}")
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    # Running maximum per class instead of a masked argmax: avoids a (C, Z, Y, X) temporary.
    best = torch.full(probs.shape[1:], threshold, dtype=torch.promote_types(probs.dtype, torch.float32),
                      device=probs.device)
    for index in range(probs.shape[0]):
        wins = probs[index] > best  # strict, so an equal later class does not take over
        labels.masked_fill_(wins, index + 1)
        torch.where(wins, probs[index].to(best.dtype), best, out=best)
    return labels


def _seeds(
    distance: np.ndarray,
    components: np.ndarray,
    num_components: int,
    structure: np.ndarray,
    method: SeedMethod,
    h: float,
    min_distance: int,
) -> np.ndarray:
    """Watershed markers (int32, unique per seed), with at least one seed per component."""
    foreground = components > 0
    if method == "h_maxima":
        # Regional maxima of the h-maxima transform rather than skimage.morphology.h_maxima: the latter
        # keeps two equally high peaks joined by a shallow saddle as two seeds, the transform merges them.
        raised = reconstruction(
            np.maximum(distance - h, 0.0), distance, method="dilation", footprint=structure
        )
        # Same connectivity as the components, so one seed never spans two components.
        peaks = local_maxima(raised, footprint=structure) & foreground
        markers, num_markers = ndimage.label(peaks, structure=structure)
    elif method == "peak_local_max":
        coords = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
        markers = np.zeros(distance.shape, dtype=np.int32)
        num_markers = len(coords)
        markers[tuple(coords.T)] = np.arange(1, num_markers + 1, dtype=np.int32)
    else:
        raise ValueError(f"unknown seed method {method!r}; use 'h_maxima' or 'peak_local_max'")
    # A component whose maximum is lower than h (thin objects) has no seed; give it its own at its
    # deepest point so the watershed does not drop it.
    seeded = np.zeros(num_components + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    unseeded = np.flatnonzero(~seeded[1:]) + 1
    if unseeded.size:
        positions = ndimage.maximum_position(distance, components, unseeded)
        for offset, position in enumerate(positions, start=1):
            markers[position] = num_markers + offset
    return markers


def _instances_one(
    mask: np.ndarray,
    *,
    min_size: int,
    connectivity: int,
    watershed: bool,
    seeds: SeedMethod,
    h: float,
    min_distance: int,
    voxel_size: Sequence[float] | None,
) -> tuple[np.ndarray, int]:
    """Instances of one binary (Z, Y, X) mask, labelled 1..n; returns (labels uint32, n)."""
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    components, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.uint32), 0
    if min_size > 1:
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        # Renumber kept components to 1..k in one lookup.
        lookup = np.zeros(count + 1, dtype=components.dtype)
        lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=components.dtype)
        components = lookup[components]
        count = int(keep.sum())
        if count == 0:
            return np.zeros(mask.shape, dtype=np.uint32), 0
    if watershed:
        foreground = components > 0
        distance = ndimage.distance_transform_edt(foreground, sampling=voxel_size)
        markers = _seeds(distance, components, count, structure, seeds, h, min_distance)
        # Seeds are numbered 1..n and every seed keeps its own voxels, so the ids stay consecutive.
        labels = skimage_watershed(-distance, markers, mask=foreground, connectivity=connectivity)
        return labels.astype(np.uint32), int(labels.max())
    return components.astype(np.uint32), count


def _foreground(channels: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (C, Z, Y, X) masks: probabilities above ``threshold``, or the non-zero voxels of a mask."""
    if np.issubdtype(channels.dtype, np.floating):
        return channels > threshold
    if np.issubdtype(channels.dtype, np.bool_) or np.issubdtype(channels.dtype, np.integer):
        return channels != 0
    raise TypeError(f"probs must be float probabilities or a binary mask, got dtype {channels.dtype}")


def probs_to_instances(
    probs: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 0,
    connectivity: int = 1,
    watershed: bool = False,
    seeds: SeedMethod = "h_maxima",
    h: float = 2.0,
    min_distance: int = 3,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Instance labels from probabilities or a binary mask, per class, with ids unique across classes.

    Each class is thresholded on its own (classes may overlap; each keeps its own output channel), split
    into 3D connected components, and components smaller than ``min_size`` voxels are removed. With
    ``watershed=True`` each remaining component is further split by a seeded watershed on the negative
    Euclidean distance transform, which separates touching objects (e.g. mitochondria) joined by a
    narrow neck. The size filter acts on connected components, before splitting, so a large object is
    never left with holes where small watershed pieces were dropped.

    Args:
        probs: float (C, Z, Y, X) probabilities, or a single (Z, Y, X) volume: float probabilities or a
            binary (bool or integer, non-zero = foreground) mask.
        threshold: foreground where probability is strictly greater (ignored for binary masks).
        min_size: minimum component size in voxels; 0 or 1 keeps everything.
        connectivity: neighbourhood for components and watershed, 1 (faces, 6-connected) to 3 (26).
        watershed: split touching objects with a distance-transform watershed.
        seeds: how to place watershed seeds: ``"h_maxima"`` (regional maxima of the h-maxima
            transform of the distance map: two peaks stay separate only if the saddle between them is at
            least ``h`` below the lower one; robust to plateaus) or ``"peak_local_max"`` (local maxima
            at least ``min_distance`` voxels apart).
        h: seed depth for ``"h_maxima"``, in the units of the distance map (physical units of
            ``voxel_size`` if given, otherwise voxels, so rescale it with ``voxel_size``). Larger merges
            more.
        min_distance: minimum seed separation in voxels for ``"peak_local_max"``.
        voxel_size: (Z, Y, X) voxel size, e.g. in nm, for an anisotropic distance transform; None means
            isotropic unit voxels.

    Returns:
        uint32 (C, Z, Y, X) for (C, Z, Y, X) input, or (Z, Y, X) for (Z, Y, X) input: 0 background,
        instance ids 1..N numbered consecutively across classes in class order.
    """
    probs = np.asarray(probs)
    if probs.ndim not in (3, 4):
        raise ValueError(f"probs must have shape (C, Z, Y, X) or (Z, Y, X), got {probs.shape}")
    if not 1 <= connectivity <= 3:
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if voxel_size is not None:
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) != 3 or min(voxel_size) <= 0:
            raise ValueError(f"voxel_size must be three positive (Z, Y, X) sizes, got {voxel_size}")
    if watershed and seeds == "h_maxima" and h <= 0:
        raise ValueError(f"h must be positive, got {h}")

    single = probs.ndim == 3
    masks = _foreground(probs[np.newaxis] if single else probs, threshold)
    out = np.zeros(masks.shape, dtype=np.uint32)
    next_id = 0
    for index, mask in enumerate(masks):
        labels, count = _instances_one(
            mask,
            min_size=min_size,
            connectivity=connectivity,
            watershed=watershed,
            seeds=seeds,
            h=h,
            min_distance=min_distance,
            voxel_size=voxel_size,
        )
        out[index] = labels
        out[index][labels > 0] += next_id
        next_id += count
    return out[0] if single else out


def to_uint8_probs(probs: ArrayT) -> ArrayT:
    """Quantise probabilities in [0, 1] (numpy, or torch on any device) to uint8 ``round(p * 255)`` for
    compact storage (any shape).

    Values are clipped to [0, 1] first. Rounding to the nearest of 256 levels (half to even) bounds the
    round-trip error ``|from_uint8_probs(to_uint8_probs(p)) - p|`` by half a step, 1/510 (plus float32
    rounding).

    Raises:
        TypeError: for non-float input. ValueError: if ``probs`` contains NaN.
    """
    if not isinstance(probs, torch.Tensor):
        array = np.asarray(probs)
        _check_float(array)
        return to_uint8_probs(as_tensor(array)).numpy()
    _check_float(probs)
    if bool(torch.isnan(probs).any()):
        raise ValueError("probs contain NaN; they cannot be quantised")
    return torch.round(probs.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def from_uint8_probs(quantised: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_uint8_probs`: float32 probabilities ``q / 255``, same shape."""
    quantised = np.asarray(quantised)
    if quantised.dtype != np.uint8:
        raise TypeError(f"quantised probabilities must be uint8, got dtype {quantised.dtype}")
    return quantised.astype(np.float32) / np.float32(255.0)
