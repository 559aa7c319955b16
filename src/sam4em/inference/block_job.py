"""`BlockJob`: segment one z-block of a run and write its owned slices (one process, or a Dask task).

A block reads ``overlap`` warm-up slices on each side whose predictions only fill the memory bank;
with ``direction="both"`` the forward probabilities of the owned slices wait in a temporary Zarr store
beside the target (``<target>.partial-forward-<i>.zarr``, deleted after the block) for the backward
pass, with which they are averaged slice by slice. See :mod:`sam4em.inference.streaming` for the
accuracy at block boundaries.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from sam4em.inference.output_files import open_writable
from sam4em.inference.postprocess import probs_to_labels, to_uint8_probs
from sam4em.inference.predictor import SlicePredictor, plan_tiling, predict_slices
from sam4em.inference.segment import Direction
from sam4em.inference.tiling import ZBlock
from sam4em.models import SegmentationModel

__all__ = ["BlockJob"]


@dataclass(frozen=True)
class BlockJob:
    """Everything one process needs to segment any z-block of a run (picklable, model aside).

    Blocks are written to ``target`` at ``keys``: one (Z, Y, X) array per selected class for
    ``stage="probs"``, one uint8 class map for ``stage="labels"``.
    """

    input_path: str
    input_key: str | None
    shape: tuple[int, int, int]
    bounds: tuple[float, float]
    class_indices: tuple[int, ...]
    direction: Direction
    tile_shape: tuple[int, int] | None
    halo: tuple[int, int] | None
    batch_size: int
    device: str | None
    stage: Literal["probs", "labels"]
    dtype: str
    threshold: float
    target: Path
    keys: tuple[str | None, ...]
    #: `digest_state` of the model the run was started with; workers loading it themselves check it.
    model_weights: str
    #: OME-Zarr outputs hold the input image too: its owned slices are copied there with each block.
    input_copy: Path | None = None

    def predictor(self, model: SegmentationModel) -> SlicePredictor:
        """A predictor for this job's slices; reuse it for all blocks one process runs."""
        plan = plan_tiling(self.shape[1:], model.image_size, self.tile_shape, self.halo)
        # The U-Net baselines go slice by slice through the same calls (new_memory_bank, forward).
        return SlicePredictor(
            model, plan, intensity_bounds=self.bounds, batch_size=self.batch_size, device=self.device
        )

    def spill_path(self, block: ZBlock) -> Path:
        """Where the forward probabilities of ``block`` wait for its backward pass."""
        return self.target.with_name(f"{self.target.name}.partial-forward-{block.index}.zarr")

    def run(
        self,
        block: ZBlock,
        volume: Any,
        predictor: SlicePredictor,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Segment ``block`` of ``volume`` (Z, Y, X) and write its owned slices to the target."""
        owned = block.write.stop - block.write.start
        dtype = np.dtype(self.dtype)
        count = len(self.keys)
        buffers = np.empty((count, owned, *self.shape[1:]), dtype=dtype)
        for z, probs in self._fused(block, volume, predictor, tick):
            if self.stage == "labels":
                labels = probs_to_labels(probs, self.threshold)
                # One class map (1..C), or one 0/1 mask per class (OME-Zarr's labels/<class>).
                buffers[:, z - block.write.start] = labels if count == 1 else labels == np.arange(1, count + 1)[:, None, None]
            elif dtype == np.uint8:
                buffers[:, z - block.write.start] = to_uint8_probs(probs)
            else:
                buffers[:, z - block.write.start] = probs
        for key, buffer in zip(self.keys, buffers, strict=True):
            with open_writable(self.target, key) as out:
                out[block.write] = buffer
        if self.input_copy is not None:
            with open_writable(self.input_copy, None) as out:
                out[block.write] = volume[block.write]

    def _pass(
        self,
        volume: Any,
        predictor: SlicePredictor,
        order: range,
        keep: range,
        tick: Callable[[], None] | None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Selected-class probabilities (C, Y, X) of the slices in ``keep``, predicted along ``order``."""
        selection = list(self.class_indices)
        for z, probs in predict_slices(volume, predictor, order):
            if tick is not None:
                tick()
            if z in keep:
                yield z, probs[selection]

    def _fused(
        self,
        block: ZBlock,
        volume: Any,
        predictor: SlicePredictor,
        tick: Callable[[], None] | None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        owned = range(block.write.start, block.write.stop)
        forward = range(block.read_forward.start, block.read_forward.stop)
        backward = range(block.read_backward.stop - 1, block.read_backward.start - 1, -1)
        if self.direction == "forward":
            yield from self._pass(volume, predictor, forward, owned, tick)
            return
        if self.direction == "backward":
            yield from self._pass(volume, predictor, backward, owned, tick)
            return
        spill_path = self.spill_path(block)
        spill = zarr.create_array(
            store=str(spill_path),
            shape=(len(owned), len(self.class_indices), *self.shape[1:]),
            chunks=(1, len(self.class_indices), *self.shape[1:]),
            dtype=np.float32,
            compressors=None,  # written once, read once: compression would only cost time
            overwrite=True,
        )
        try:
            # p / 2 + q / 2 in float32, as segment_volume accumulates its passes, so one block is exact.
            for z, probs in self._pass(volume, predictor, forward, owned, tick):
                spill[z - block.write.start] = probs / 2
            for z, probs in self._pass(volume, predictor, backward, owned, tick):
                yield z, np.asarray(spill[z - block.write.start]) + probs / 2
        finally:
            shutil.rmtree(spill_path, ignore_errors=True)

