"""A prepared segmentation run: checked, its model loaded, its output claimed and created (or reopened
to resume), its z-blocks planned; then progress records and the finish (instances, complete, swap).

Used by :func:`sam4em.inference.streaming.segment_to_file` (one process) and
:func:`sam4em.inference.distributed.segment_to_file_dask` (blocks as Dask tasks).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sam4em import __version__
from sam4em.claim import claim_output
from sam4em.data.normalize import volume_percentiles
from sam4em.devices import available_host_memory, default_device, device_for, resolve_device
from sam4em.fingerprint import digest_state, digest_volume
from sam4em.inference.block_job import BlockJob
from sam4em.inference.options import SegmentOptions, recorded_options
from sam4em.inference.output_files import (
    CHUNK_YX,
    OUTPUT_DTYPES,
    create_arrays,
    labels_store,
    mark,
    output_keys,
    read_record,
    remove,
    remove_spills,
    swap_in,
    write_instances,
    z_chunk,
)
from sam4em.inference.predictor import ProgressCallback, TilingPlan, plan_tiling
from sam4em.inference.request import CheckedRequest, ModelSource, check_request, select_classes
from sam4em.inference.resume import INPUT_FINGERPRINT, choose_target, same_run
from sam4em.inference.tiling import ZBlock, z_blocks
from sam4em.io import open_volume
from sam4em.io.ome_zarr_output import create_ome_output, ome_output_keys
from sam4em.io.output_record import BLOCKS_DONE, COMPLETE, RUN_RECORD
from sam4em.models import SegmentationModel, load_model
from sam4em.models.compiled import compile_parts
from sam4em.models.declared import model_class_names

__all__ = [
    "TARGET_WINDOWS",
    "WINDOW_GPU_BYTES",
    "Interrupted",
    "Run",
    "SliceCounter",
    "StopSignal",
    "choose_streams",
    "finish_run",
    "mark_done",
    "prepare_run",
    "stop_requested",
]

StopSignal = Callable[[], bool] | threading.Event


class Interrupted(RuntimeError):
    """A run was stopped between blocks; the finished blocks are on disk, rerun with resume=True."""

    def __init__(self, output: Path, done: int, total: int) -> None:
        super().__init__(
            f"{output}: interrupted after {done} of {total} z-blocks; "
            "rerun with the same options and --resume (resume=True) to finish it"
        )
        self.output = output
        self.done = done
        self.total = total


@dataclass(frozen=True)
class Run:
    """A prepared run: what to compute (``job``), which blocks are left and where results go.

    ``written`` is the file being filled: the output itself, or its hidden sibling that replaces it
    when complete (``swap``). ``keys`` are the output's arrays; for instances, blocks go to a temporary
    label store (``job.target``) and the output is filled at the end. ``complete``: nothing is left
    but, maybe, the swap (a run that stopped between marking its output complete and swapping it in).
    ``options`` are resolved: actual classes, tile, halo, overlap and device.
    """

    job: BlockJob
    blocks: tuple[ZBlock, ...]
    done: frozenset[int]
    complete: bool
    output: Path
    written: Path
    keys: tuple[str | None, ...]
    swap: bool
    options: SegmentOptions

    @property
    def todo(self) -> tuple[ZBlock, ...]:
        return tuple(b for b in self.blocks if b.index not in self.done)

    @property
    def waves(self) -> tuple[tuple[ZBlock, ...], ...]:
        """The blocks left, in groups of ``options.streams`` that run as z-streams in lockstep."""
        todo, size = self.todo, self.options.streams or 1
        return tuple(todo[i : i + size] for i in range(0, len(todo), size))

    def slices_per_block(self, block: ZBlock) -> int:
        """Slices predicted for ``block``, warm-up included (for progress)."""
        forward = block.read_forward.stop - block.read_forward.start
        backward = block.read_backward.stop - block.read_backward.start
        return {"forward": forward, "backward": backward, "both": forward + backward}[self.job.direction]


def stop_requested(stop: StopSignal | None) -> bool:
    """Whether ``stop`` (a callable or a ``threading.Event``) asks to stop."""
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


@contextmanager
def prepare_run(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    model: ModelSource,
    options: SegmentOptions,
    *,
    distributed: bool = False,
) -> Iterator[tuple[Run, SegmentationModel]]:
    """Check the request, load the model, claim the output, create (or reopen, to resume) it and plan
    its blocks.

    The arguments are those of :func:`sam4em.inference.streaming.segment_to_file`; ``distributed``
    refuses output formats several processes cannot write at once. A context manager: yields the run
    and the loaded model, and holds the output's claim (:func:`sam4em.claim.claim_output`) until the
    ``with`` block ends, so a second run on the same output is refused while this one writes it.
    """
    request = check_request(input_path, output_path, options, model, multi_writer=distributed)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if options.compile and distributed:
        raise ValueError("--compile: Dask workers load their own model, uncompiled; drop --compile or --workers/--scheduler")
    loaded, placement = _load(model, options.device, distributed)
    if options.compile:
        compile_parts(loaded)
    resolved, indices, plan = _resolve(options, request, loaded, placement)
    with open_volume(request.input, request.input_key) as volume:  # mode "r": never opened for writing
        voxel_size, input_dtype = volume.voxel_size, volume.dtype
        bounds = volume_percentiles(volume)
        input_fingerprint = digest_volume(volume)
    weights = digest_state(loaded.state_dict())
    record = {
        "sam4em_version": __version__,
        "input": request.input,
        # Its content, not only its path: a stack replaced or re-aligned in place is another input.
        INPUT_FINGERPRINT: input_fingerprint,
        # Model identity: the base it declares (`sam4em.models.ModelInfo`).
        "model_base": loaded.info.base,
        "model_source": source,
        # The weights themselves, not their path: a run folder retrained in place is another model.
        "model_weights": weights,
        "intensity_bounds": list(bounds),
        **recorded_options(resolved),
    }
    selected = list(resolved.classes or ())
    keys: tuple[str | None, ...]
    if request.ome:
        keys = ome_output_keys(resolved.output_type, selected)
    else:
        keys = output_keys(request.format, request.output_key, resolved.output_type, selected)
    blocks = z_blocks(request.shape[0], resolved.block_size, resolved.overlap or 0)  # refuses a bad size
    layout = _Layout(request, (z_chunk(resolved.block_size), CHUNK_YX, CHUNK_YX), voxel_size, input_dtype,
                     {RUN_RECORD: json.dumps(record), COMPLETE: False})  # fmt: skip
    with claim_output(request.output):  # from here on the output's files are written
        written, swap, fresh = choose_target(
            request.output, keys, record, overwrite=options.overwrite, resume=options.resume
        )
        remove_spills(request.output)
        job = _block_job(request, resolved, indices, plan, bounds, weights, written, keys)
        block_bytes = job.block_bytes(resolved.block_size, np.dtype(input_dtype).itemsize)
        resolved = resolved.replace(streams=choose_streams(resolved, plan, len(blocks), placement, block_bytes))
        if fresh:
            remove(written)
            _create_output(written, keys, resolved, job, layout)
        done, complete = _blocks_done(job, written, keys, blocks, record, layout, fresh=fresh)
        run = Run(job=job, blocks=blocks, done=done, complete=complete, output=request.output, written=written,
                  keys=keys, swap=swap, options=resolved)  # fmt: skip
        yield run, loaded


@dataclass(frozen=True)
class _Layout:
    """What every array of a run's output shares."""

    request: CheckedRequest
    chunks: tuple[int, int, int]
    voxel_size: Any
    input_dtype: Any
    #: The run record, not yet complete.
    attrs: dict[str, Any]

    @property
    def progress_attrs(self) -> dict[str, Any]:
        """Attrs of the arrays blocks are written to: they also list finished blocks."""
        return {**self.attrs, BLOCKS_DONE: []}


def _create_output(
    written: Path, keys: tuple[str | None, ...], options: SegmentOptions, job: BlockJob, layout: _Layout
) -> None:
    """A new output (OME-Zarr or plain arrays); instance outputs are filled at the end, blocks do not
    go there, so their progress is recorded in the label store instead."""
    instances = options.output_type == "instances"
    dtype = job.dtype if options.output_type == "probs" else OUTPUT_DTYPES[options.output_type]
    attrs = layout.attrs if instances else layout.progress_attrs
    shape = layout.request.shape
    if layout.request.ome:
        create_ome_output(
            written, shape=shape, input_dtype=layout.input_dtype, output_type=options.output_type,
            classes=list(options.classes or ()), dtype=dtype, chunks=layout.chunks,
            voxel_size=layout.voxel_size, attrs=attrs,
        )  # fmt: skip
    else:
        create_arrays(written, keys, shape, dtype, layout.chunks, layout.voxel_size, attrs)


def _blocks_done(
    job: BlockJob,
    written: Path,
    keys: tuple[str | None, ...],
    blocks: tuple[ZBlock, ...],
    record: dict[str, Any],
    layout: _Layout,
    *,
    fresh: bool,
) -> tuple[frozenset[int], bool]:
    """(finished blocks, whether the output is complete) of the output being written; an instance
    run's label store is (re)created unless it holds blocks of this very run."""
    found = None if fresh else read_record(written, keys[0])
    complete = found is not None and found.complete
    if complete:
        return frozenset(b.index for b in blocks), True
    done: frozenset[int] = found.done if found is not None else frozenset()
    if job.target != written:  # instances: blocks go to the label store
        store = read_record(job.target, None)
        if fresh or store is None or not same_run(store.run, record):
            remove(job.target)
            create_arrays(job.target, (None,), layout.request.shape, np.uint8, layout.chunks,
                          layout.voxel_size, layout.progress_attrs)  # fmt: skip
        else:
            done = store.done
    return done, False


def _load(model: ModelSource, device: str | None, distributed: bool) -> tuple[SegmentationModel, torch.device | None]:
    """The model, loaded if a run folder or name, and where it runs (``device``, else
    :func:`device_for`; None for Dask workers, which keep their own default placement)."""
    placement = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        if placement is None and not distributed:
            placement = default_device()  # a model loaded from disk has no placement of its own
        # Straight onto the device: no second copy on the CPU.
        loaded = load_model(os.fspath(model), device=None if placement is None else str(placement))
    else:
        loaded = model
    if placement is None and not distributed:
        placement = device_for(loaded)
    return (loaded.to(placement) if placement is not None else loaded), placement


def _resolve(
    options: SegmentOptions, request: CheckedRequest, model: SegmentationModel, device: torch.device | None
) -> tuple[SegmentOptions, tuple[int, ...], TilingPlan]:
    """The options as this run applies them (classes, tile, halo, overlap, device), the selected
    class indices and the tiling plan."""
    names = model_class_names(model)
    indices = select_classes(names, options.classes, "the model")
    overlap = model.memory_capacity if options.overlap is None else options.overlap
    plan = plan_tiling(request.shape[1:], model.image_size, options.tile_shape, options.halo)
    resolved = options.replace(
        input_key=request.input_key,
        output_key=request.output_key,
        classes=tuple(names[i] for i in indices),
        tile_shape=plan.tile_shape,
        halo=plan.halo,
        overlap=overlap,
        ome=request.ome,
        device=None if device is None else str(device),
    )
    return resolved, indices, plan


#: Windows per model call that a GPU needs to be kept busy (the encoder's batch throughput levels off
#: around here for 512-pixel windows); automatic ``streams`` aim for it.
TARGET_WINDOWS = 64
#: GPU memory allowed per 512² window in flight (activations, memory bank, both decoders), scaled with
#: the window's area. An allowance, not a measurement (no GPU measured it yet): generous on purpose,
#: so that automatic streams do not run a smaller GPU out of memory.
WINDOW_GPU_BYTES = 256 << 20


def choose_streams(
    options: SegmentOptions, plan: TilingPlan, blocks: int, device: torch.device | None, block_bytes: int
) -> int:
    """Z-blocks to advance in lockstep: ``options.streams`` if given (at most ``blocks``); otherwise 1
    on a CPU (where one batch keeps the cores busy and larger ones were slower, docs/benchmarks.md)
    and on a GPU enough streams to reach :data:`TARGET_WINDOWS` windows per call, limited by the
    blocks, by half the free GPU memory (:data:`WINDOW_GPU_BYTES` per window plus each stream's
    slice-sized tensors) and by a quarter of the free host memory for what each block holds until it is
    written (``block_bytes``, `BlockJob.block_bytes`; one wave is written while the next is
    predicted: two waves at once)."""
    if options.streams is not None:
        return max(1, min(options.streams, blocks))
    if device is None or device.type != "cuda":
        return 1
    windows_per_call = min(options.batch_size, len(plan.tiles))
    classes = len(options.classes or ()) or 1
    pixels = plan.image_shape[0] * plan.image_shape[1]
    by_host = available_host_memory() // 4 // max(1, 2 * block_bytes)
    # Per slice on the GPU besides the windows: the raw slice (at most 8 bytes a pixel), its normalised
    # copy and the blending weights (4 each), the sums, the result and its output copy (4 each a class).
    gpu_per_stream = windows_per_call * WINDOW_GPU_BYTES * plan.window**2 // 512**2 + (16 + 12 * classes) * pixels
    by_gpu = torch.cuda.mem_get_info(device)[0] // 2 // gpu_per_stream
    return max(1, min(TARGET_WINDOWS // max(1, windows_per_call), blocks, by_host, by_gpu))


def _block_job(
    request: CheckedRequest,
    options: SegmentOptions,
    indices: tuple[int, ...],
    plan: TilingPlan,
    bounds: tuple[float, float],
    weights: str,
    written: Path,
    keys: tuple[str | None, ...],
) -> BlockJob:
    """What each block needs; instance outputs collect labels in a temporary store first."""
    instances = options.output_type == "instances"
    stage: Literal["probs", "labels"] = "probs" if options.output_type == "probs" else "labels"
    return BlockJob(
        input_path=request.input,
        input_key=request.input_key,
        shape=request.shape,
        bounds=bounds,
        class_indices=indices,
        direction=options.direction,
        tile_shape=plan.tile_shape,
        halo=plan.halo,
        batch_size=options.batch_size,
        device=options.device,
        stage=stage,
        dtype=options.probs_dtype if stage == "probs" else np.dtype(np.uint8).name,
        threshold=options.threshold,
        target=labels_store(written) if instances else written,
        keys=(None,) if instances else keys,
        model_weights=weights,
        input_copy=written if options.ome else None,
    )


def mark_done(run: Run, done: set[int] | frozenset[int]) -> None:
    """Record finished blocks in the attrs of the arrays blocks are written to."""
    mark(run.job.target, run.job.keys, **{BLOCKS_DONE: sorted(int(i) for i in done)})


def finish_run(run: Run) -> Path:
    """After all blocks: instances if asked, mark the output complete, swap it in, clean up."""
    if not run.complete:
        if run.options.output_type == "instances":
            write_instances(
                run.job.target, run.written, run.keys, run.blocks, classes=len(run.job.class_indices),
                min_size=run.options.min_size, watershed=run.options.watershed,
            )  # fmt: skip
            remove(run.job.target)
        mark(run.written, run.keys, **{COMPLETE: True})
    if run.swap:
        swap_in(run.written, run.output)
    return run.output


class SliceCounter:
    """Counts predicted slices (warm-up included) for a (done, total) progress callback."""

    def __init__(self, run: Run, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.done = 0
        self.total = sum(run.slices_per_block(b) for b in run.todo)

    def tick(self, count: int = 1) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done, self.total)
