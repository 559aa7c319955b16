"""The streaming-metric interface: a metric of one class, fed z-chunk by z-chunk, then asked once.

:func:`~sam4em.evaluation.evaluate_volumes` reads a volume ``chunk_slices`` slices at a time and
hands every registered metric (:mod:`~sam4em.evaluation.metric_registry`) each chunk of each class
as a :class:`ClassChunk`. A metric keeps what it needs (counts, surface points, labels at the chunk
border, ...) and computes its scores in :meth:`StreamingMetric.result`. Adding a metric is one
subclass plus one :func:`~sam4em.evaluation.metric_registry.register_metric` call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["ChunkBounds", "ClassChunk", "MetricContext", "ScoreValue", "StreamingMetric", "chunk_bounds"]

#: One number of the flat result (what the JSON file and the table hold).
ScoreValue = float | int

ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class MetricContext:
    """What is fixed for a whole evaluation: set once when a metric is created."""

    #: of 3D connected components, 1..3; None = 3 (26-connectivity).
    connectivity: int | None
    #: (z, y, x) voxel size (1.0 each when distances are in voxels).
    spacing: tuple[float, ...]


@dataclass(frozen=True)
class ChunkBounds:
    """Slices ``z0:z1`` of a volume, read with one halo slice on each side as ``h0:h1`` (within the volume)."""

    z0: int
    z1: int
    h0: int
    h1: int

    @property
    def core(self) -> slice:
        """The chunk's own slices within the halo block."""
        return slice(self.z0 - self.h0, self.z1 - self.h0)


def chunk_bounds(n_slices: int, chunk_slices: int) -> Iterator[ChunkBounds]:
    """The chunks of ``chunk_slices`` slices that cover ``n_slices`` in z order, each with its halo."""
    for z0 in range(0, n_slices, chunk_slices):
        z1 = min(z0 + chunk_slices, n_slices)
        yield ChunkBounds(z0, z1, max(z0 - 1, 0), min(z1 + 1, n_slices))


@dataclass(frozen=True)
class ClassChunk:
    """One z-chunk of one class: boolean (z, Y, X) blocks read with one halo slice on each side.

    ``pred_block`` and ``gt_block`` are the class's foreground, already masked (voxels outside the
    evaluation mask are background in both). The halo slices belong to the neighbouring chunks: a
    metric counts only :attr:`pred` / :attr:`gt` (the ``core`` slices) and uses the halo only to see
    the real neighbours of border voxels (surfaces). ``z_offset`` is the volume's z of ``core``'s
    first slice.
    """

    pred_block: NDArray[np.bool_]
    gt_block: NDArray[np.bool_]
    #: the evaluation mask over the same slices, None without one.
    mask_block: NDArray[np.bool_] | None
    core: slice
    z_offset: int

    @property
    def pred(self) -> NDArray[np.bool_]:
        """The prediction's foreground in the chunk's own slices, (z, Y, X)."""
        return self.pred_block[self.core]

    @property
    def gt(self) -> NDArray[np.bool_]:
        """The ground truth's foreground in the chunk's own slices, (z, Y, X)."""
        return self.gt_block[self.core]

    @property
    def mask(self) -> NDArray[np.bool_] | None:
        """The evaluation mask in the chunk's own slices (None without one)."""
        return None if self.mask_block is None else self.mask_block[self.core]


class StreamingMetric(ABC, Generic[ResultT]):
    """A metric of one class accumulated over z-chunks; one instance per class and evaluation.

    Contract: fed the chunks of a volume in z order (:meth:`add`, any chunk size), :meth:`result`
    must return exactly the same result as when fed the whole volume as one chunk; chunking is a
    memory bound, never an approximation. Keep exact state
    (integer counts, collected points, per-slice values summed only at the end, the last slice of
    the previous chunk where a metric looks across slices), not per-chunk scores to average.
    ``tests/test_evaluation_metric_plugin.py`` checks this for every registered metric.

    A subclass declares ``name`` (its registry name) and ``keys`` (the keys it adds to each
    class's scores, in output order; unique among registered metrics), and implements
    :meth:`add`, :meth:`result` (a typed result) and :meth:`values` (that result as ``keys`` ->
    number, for the JSON file and the tables). What the views show is declared here too, so they
    follow the registered metrics (:mod:`~sam4em.evaluation.metric_registry`): ``table_keys``, the
    keys in summary tables (``sam4em evaluate``'s table, the napari *Evaluate* table), and
    ``distance_keys``, the keys measured in the evaluation's distance unit (nm or voxel); both
    subsets of ``keys``.
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]
    table_keys: ClassVar[tuple[str, ...]] = ()
    distance_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: MetricContext) -> None:
        self.context = context

    @abstractmethod
    def add(self, chunk: ClassChunk) -> None:
        """Take in the next chunk along z."""

    @abstractmethod
    def result(self) -> ResultT:
        """The scores of everything added so far."""

    @abstractmethod
    def values(self, result: ResultT) -> dict[str, ScoreValue]:
        """``result`` as ``{key: number}`` with exactly the keys :attr:`keys`."""
