"""Connected components of a binary (Z, Y, X) volume labelled chunk by chunk along z, joined exactly.

Each chunk is labelled on its own (provisional labels, numbered on from the previous chunks);
labels of the last slice of a chunk that touch labels of the next chunk's first slice under the
chosen connectivity are recorded as edges, and :meth:`StreamingLabels.final_labels` maps every
provisional label to its component. The components equal those of labelling the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from sam4em.evaluation.instance_metrics import connectivity_structure, label_instances

__all__ = ["StreamingLabels", "join_map", "touching_labels"]


def join_map(n_labels: int, edges: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Map provisional labels 0..n to final labels; labels joined by an edge end up equal, 0 stays 0."""
    if n_labels == 0:
        return np.zeros(1, dtype=np.int64)
    pairs = np.concatenate(edges) if edges else np.empty((0, 2), dtype=np.int64)
    graph = sparse.coo_array(
        (np.ones(len(pairs)), (pairs[:, 0] - 1, pairs[:, 1] - 1)), shape=(n_labels, n_labels)
    )
    _, component = connected_components(graph, directed=False)
    return np.concatenate([[0], component.astype(np.int64) + 1])


def touching_labels(
    below: NDArray[np.int64], above: NDArray[np.int64], plane: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """Label pairs (label in slice z, label in slice z+1) that touch under the neighbourhood ``plane``.

    ``plane`` is the (3, 3) z+1 layer of the 3D structuring element: offsets (dy, dx) that connect.
    """
    height, width = below.shape
    # One int64 key per pair: a 1D unique is much faster than np.unique(axis=0) on many pairs.
    base = int(above.max()) + 1
    keys = []
    for dy, dx in np.argwhere(plane) - 1:
        a = below[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        b = above[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)]
        both = (a > 0) & (b > 0)
        keys.append(a[both] * base + b[both])
    unique = np.unique(np.concatenate(keys))
    return np.stack([unique // base, unique % base], axis=1)


@dataclass
class StreamingLabels:
    """Connected components of one binary volume fed slab by slab, with the joins across slabs."""

    connectivity: int | None
    n_labels: int = 0
    edges: list[NDArray[np.int64]] = field(default_factory=list)
    last_slice: NDArray[np.int64] | None = None

    def add(self, slab: NDArray[np.bool_]) -> NDArray[np.int64]:
        """Provisional labels of ``slab`` (z, Y, X), numbered after those of the earlier slabs."""
        labels, n = label_instances(slab, self.connectivity)
        labels[labels > 0] += self.n_labels
        if self.last_slice is not None and slab.shape[0] > 0:
            plane = connectivity_structure(3, self.connectivity)[2]
            self.edges.append(touching_labels(self.last_slice, labels[0], plane))
        if slab.shape[0] > 0:
            self.last_slice = labels[-1].copy()
        self.n_labels += n
        return labels

    def final_labels(self) -> NDArray[np.int64]:
        """Provisional label -> component label (1..n; 0 stays background), indexable by label."""
        return join_map(self.n_labels, self.edges)
