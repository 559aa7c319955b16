"""`BlockJob`: segment z-blocks of a run and write their owned slices (one process, or a Dask task).

Several blocks may run together as z-streams in lockstep (`sam4em.inference.predictor.predict_streams`):
one model call then holds windows of every block, which is what keeps a GPU busy. A block reads
``overlap`` warm-up slices on each side whose predictions only fill the memory bank;
with ``direction="both"`` the forward probabilities of the owned slices wait for the backward pass,
with which they are averaged slice by slice: in a GPU's memory where they fit, else in a temporary Zarr
store beside the target (``<target>.partial-forward-<i>.zarr``, deleted after the block). See
:mod:`sam4em.inference.streaming` for the accuracy at block boundaries.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr

from sam4em.data.tensors import as_tensor
from sam4em.inference.output_files import open_writable
from sam4em.inference.postprocess import probs_to_labels, to_uint8_probs
from sam4em.inference.predictor import SlicePredictor, plan_tiling, predict_streams
from sam4em.inference.segment import Direction
from sam4em.inference.tiling import ZBlock
from sam4em.models import SegmentationModel

__all__ = ["BlockJob", "BlockOutput"]


def spill_fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` of forward probabilities may wait in ``device``'s own memory: a GPU with four
    times that free (counting what torch holds reserved but unused). On a CPU they wait on disk, so
    that block size, not RAM, bounds a long block."""
    if device.type != "cuda":
        return False
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return 4 * nbytes <= torch.cuda.mem_get_info(device)[0] + reusable


@dataclass(frozen=True)
class ForwardHalves:
    """The forward pass's probabilities / 2 of a block's owned slices, (slices, C, Y, X) float32, until
    its backward pass: a tensor on the model's device, or a temporary Zarr store on disk."""

    store: torch.Tensor | zarr.Array

    def put(self, index: int, half: torch.Tensor) -> None:
        if isinstance(self.store, torch.Tensor):
            self.store[index] = half
        else:
            self.store[index] = half.cpu().numpy()

    def take(self, index: int, device: torch.device) -> torch.Tensor:
        stored = self.store[index]
        return stored if isinstance(stored, torch.Tensor) else as_tensor(np.asarray(stored)).to(device)


@dataclass(frozen=True)
class BlockOutput:
    """One block's results, held until written: one (slices, Y, X) array per output key, stacked,
    and the block's input slices for outputs that hold the image too (OME-Zarr), else None."""

    arrays: np.ndarray
    input_slices: np.ndarray | None


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

    def block_bytes(self, slices: int, input_itemsize: int) -> int:
        """Host memory :meth:`predict` holds for a block of ``slices`` owned slices until it is written:
        its output buffers and, for OME-Zarr, its input copy (``input_itemsize`` bytes per voxel)."""
        pixels = slices * self.shape[1] * self.shape[2]
        copy = pixels * input_itemsize if self.input_copy is not None else 0
        return len(self.keys) * pixels * np.dtype(self.dtype).itemsize + copy

    def spill_path(self, block: ZBlock) -> Path:
        """Where the forward probabilities of ``block`` wait for its backward pass."""
        return self.target.with_name(f"{self.target.name}.partial-forward-{block.index}.zarr")

    def run(
        self,
        blocks: Sequence[ZBlock],
        volume: Any,
        predictor: SlicePredictor,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Segment ``blocks`` of ``volume`` (Z, Y, X), as z-streams in lockstep (one block: alone), and
        write their owned slices to the target."""
        self.write(blocks, self.predict(blocks, volume, predictor, tick))

    def predict(
        self,
        blocks: Sequence[ZBlock],
        volume: Any,
        predictor: SlicePredictor,
        tick: Callable[[], None] | None = None,
    ) -> list[BlockOutput]:
        """What to write for each of ``blocks``: its owned slices in the output dtype and, for OME-Zarr,
        its input slices. Everything is read here, so :meth:`write` may run in another thread
        (some readers, e.g. compressed TIFF, must not be read from two threads at once)."""
        dtype = np.dtype(self.dtype)
        count = len(self.keys)
        buffers = [np.empty((count, b.write.stop - b.write.start, *self.shape[1:]), dtype=dtype) for b in blocks]
        for stream, z, probs in self._fused(blocks, volume, predictor, tick):
            # Converted on the model's device: a GPU sends back the output dtype (uint8 labels), not float32.
            buffers[stream][:, z - blocks[stream].write.start] = self._output(probs).cpu().numpy()
        copies = [np.asarray(volume[b.write]) if self.input_copy is not None else None for b in blocks]
        return [BlockOutput(arrays, copy) for arrays, copy in zip(buffers, copies, strict=True)]

    def _output(self, probs: torch.Tensor) -> torch.Tensor:
        """The selected classes' probabilities (C, Y, X) of one slice as written: one class map (1..C),
        one 0/1 mask per class (OME-Zarr's labels/<class>), or probabilities in the output dtype."""
        if self.stage == "labels":
            labels = probs_to_labels(probs, self.threshold)
            if len(self.keys) == 1:
                return labels[None]
            classes = torch.arange(1, len(self.keys) + 1, dtype=labels.dtype, device=labels.device)
            return (labels == classes[:, None, None]).to(torch.uint8)
        if np.dtype(self.dtype) == np.uint8:
            return to_uint8_probs(probs)
        return probs.to(getattr(torch, np.dtype(self.dtype).name))

    def write(self, blocks: Sequence[ZBlock], outputs: Sequence[BlockOutput]) -> None:
        """Write what :meth:`predict` returned for ``blocks``."""
        for block, output in zip(blocks, outputs, strict=True):
            for key, buffer in zip(self.keys, output.arrays, strict=True):
                with open_writable(self.target, key) as out:
                    out[block.write] = buffer
            if self.input_copy is not None and output.input_slices is not None:
                with open_writable(self.input_copy, None) as out:
                    out[block.write] = output.input_slices

    def _pass(
        self,
        volume: Any,
        predictor: SlicePredictor,
        orders: list[range],
        keep: list[range],
        tick: Callable[[], None] | None,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(stream, z, selected-class probabilities (C, Y, X) on the model's device) of the slices in
        ``keep[stream]``, each stream predicted along its ``orders[stream]``."""
        selection = list(self.class_indices)
        for stream, z, probs in predict_streams(volume, predictor, orders):
            if tick is not None:
                tick()
            if z in keep[stream]:
                yield stream, z, probs[selection]

    def _fused(
        self,
        blocks: Sequence[ZBlock],
        volume: Any,
        predictor: SlicePredictor,
        tick: Callable[[], None] | None,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        owned = [range(b.write.start, b.write.stop) for b in blocks]
        forward = [range(b.read_forward.start, b.read_forward.stop) for b in blocks]
        backward = [range(b.read_backward.stop - 1, b.read_backward.start - 1, -1) for b in blocks]
        if self.direction == "forward":
            yield from self._pass(volume, predictor, forward, owned, tick)
            return
        if self.direction == "backward":
            yield from self._pass(volume, predictor, backward, owned, tick)
            return
        spills: list[ForwardHalves] = []
        try:
            spills += self._spills(blocks, predictor.device)
            # p / 2 + q / 2 in float32, as segment_volume accumulates its passes, so one block is exact.
            for stream, z, probs in self._pass(volume, predictor, forward, owned, tick):
                spills[stream].put(z - blocks[stream].write.start, probs / 2)
            for stream, z, probs in self._pass(volume, predictor, backward, owned, tick):
                yield stream, z, spills[stream].take(z - blocks[stream].write.start, probs.device) + probs / 2
        finally:
            for block in blocks:
                shutil.rmtree(self.spill_path(block), ignore_errors=True)

    def _spills(self, blocks: Sequence[ZBlock], device: torch.device) -> list[ForwardHalves]:
        """Where the forward halves of ``blocks`` wait: in the GPU's memory when they take at most a
        quarter of what is free there (no round trip through the host and the disk), else on disk."""
        shapes = [(b.write.stop - b.write.start, len(self.class_indices), *self.shape[1:]) for b in blocks]
        if spill_fits_on(device, 4 * sum(math.prod(shape) for shape in shapes)):
            return [ForwardHalves(torch.empty(shape, dtype=torch.float32, device=device)) for shape in shapes]
        return [ForwardHalves(self._spill(block)) for block in blocks]

    def _spill(self, block: ZBlock) -> zarr.Array:
        """A temporary store for the forward probabilities of ``block``'s owned slices."""
        return zarr.create_array(
            store=str(self.spill_path(block)),
            shape=(block.write.stop - block.write.start, len(self.class_indices), *self.shape[1:]),
            chunks=(1, len(self.class_indices), *self.shape[1:]),
            dtype=np.float32,
            compressors=None,  # written once, read once: compression would only cost time
            overwrite=True,
        )
