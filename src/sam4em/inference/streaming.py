"""`segment_to_file`: segment a volume of any size from file to file, in z-blocks, resumably.

The input is read slice by slice (never whole) and the output written block by block, so peak
memory depends on the slice size and ``block_size``, not on the number of slices:

* the volume is cut along z into blocks (:func:`sam4em.inference.tiling.z_blocks`); each block owns
  ``block_size`` slices and also reads ``overlap`` warm-up slices on each side, whose predictions
  only fill the memory bank and are discarded. Blocks are independent, which is what makes resuming
  and distributed processing (:mod:`sam4em.inference.distributed`) simple;
* ``direction="both"`` runs the forward pass of a block first and spills its probabilities for the
  owned slices to a temporary Zarr store beside the output (``<output>.partial-forward-<i>.zarr``,
  deleted after the block), then the backward pass, which is fused (mean) with them slice by slice;
* the finished block is held in the output dtype (``block_size x C x Y x X`` values) and written in one
  go, and the output is closed after every block so each finished block is on disk.

Accuracy at block boundaries: within a block the result is exactly that of a single continuous pass
(:func:`sam4em.inference.segment_volume`), but the first owned slice of a block sees a memory bank
filled by ``overlap`` warm-up slices that themselves started from an empty memory, so near block
boundaries results equal a continuous pass only approximately. Measured with the random-weight
``test-tiny`` model (memory capacity 6) on 12 and 24 x 80 x 96 volumes in blocks of 4 and 8, as
maximum absolute differences in probability from one continuous pass: 6e-5 with ``overlap`` equal to
the memory capacity (the default), 1.5e-4 with overlap 2 and 2.7e-2 without overlap, where forward
and backward passes differ by 2.7e-2. ``tests/test_streaming.py`` asserts 1e-3 (float16 storage
included). A trained model that relies more on its memory may differ more; with ``block_size`` at
least the number of slices (one block) the result is exact.

Outputs (format by the output's extension; a path without a recognised one is refused; Zarr is
recommended for large outputs because it is written chunk-wise and supports resuming and
concurrent writers):

* ``"probs"``: one (Z, Y, X) array per class, at key ``<output_key>/<class name>`` (or the class
  name): float16, float32, or uint8 ``round(p * 255)`` (``probs_dtype``). Needs a container
  (.zarr, .h5/.hdf5, .n5);
* ``"labels"``: uint8 (Z, Y, X), 0 background, ``k + 1`` for the k-th selected class; any writable
  format (key ``output_key``, default ``"labels"`` in containers);
* ``"instances"``: uint32 (Z, Y, X), 3D connected components per class with ids unique across
  classes, smaller than ``min_size`` voxels removed, optionally split by a watershed. Connected
  components need the whole label volume: the labels are streamed to a temporary Zarr store
  (``<output>.partial-labels.zarr``) first, then **loaded into memory** (roughly 20 bytes per voxel at
  peak, more with watershed), so instance outputs require the volume's labels to fit in RAM.

An ``.ome.zarr`` output (or ``ome=True``) is OME-Zarr (NGFF 0.5) instead: the input image at the root,
``labels/<class>`` (0/1 masks, or instance ids) or ``probabilities`` (one channel per class), each a
pyramid whose levels every block writes for its own slices (:mod:`sam4em.io.ome_zarr_output`).

Every output carries the input's voxel size and in ``attrs``: ``sam4em_run`` (a JSON string with the
model base, run dir or name, the digest of its weights, class names, direction, tile, halo, block
size, overlap, intensity bounds and the sam4em version), ``sam4em_blocks_done`` (indices of finished
z-blocks) and ``sam4em_complete`` (False until the whole output is written), so a reader can tell
partial from finished outputs.

Safety: the input is only ever opened read-only and may not be the output. An existing output is
replaced only with ``overwrite=True``; the new one is then written to a hidden sibling
(``.<name>.sam4em-partial<ext>``) and swapped in by renaming once complete, so stopping midway leaves
the old output intact. ``resume=True`` continues a partial output written with the same model weights
(compared by digest, :func:`sam4em.fingerprint.digest_state`) and options, and refuses any other
partial output (only unfinished blocks are redone, and the result equals an uninterrupted run
exactly). One run at a time writes an output: :func:`prepare_run` holds the output's claim
(:mod:`sam4em.claim`) while it runs, and a second run on the same output is refused at once.
``stop`` (a callable or a ``threading.Event``, e.g. set by the CLI's SIGINT handler) is checked
before each block; when set, finished blocks stay on disk and :class:`Interrupted` is raised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr

from sam4em import __version__
from sam4em.claim import claim_output
from sam4em.data.normalize import volume_percentiles
from sam4em.devices import describe_device, device_for, resolve_device
from sam4em.fingerprint import digest_state, mismatches
from sam4em.inference.postprocess import probs_to_instances, probs_to_labels, to_uint8_probs
from sam4em.inference.predictor import ProgressCallback, SlicePredictor, plan_tiling
from sam4em.inference.segment import Direction, z_orders
from sam4em.inference.tiling import ZBlock, z_blocks
from sam4em.io import VolumeError, create_volume, open_volume, parse_path_key, resolve_path
from sam4em.io.ome_zarr_output import OME_SUFFIX, create_ome_output, ome_output_keys, open_output
from sam4em.io.output_record import BLOCKS_DONE, COMPLETE, INSTANCE_RANGES, RUN_RECORD
from sam4em.io.paths import CONTAINER_SUFFIXES, PRECOMPUTED_SCHEME, SUFFIX_FORMATS
from sam4em.models import SAM4EM, load_model

__all__ = [
    "BLOCKS_DONE",
    "COMPLETE",
    "RUN_RECORD",
    "BlockJob",
    "Interrupted",
    "OutputType",
    "StopSignal",
    "segment_to_file",
]

OutputType = Literal["probs", "labels", "instances"]
ProbsDtype = Literal["float16", "float32", "uint8"]
StopSignal = Callable[[], bool] | threading.Event
ModelSource = SAM4EM | str | os.PathLike[str]


_log = logging.getLogger(__name__)
_PROBS_DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}
_OUTPUT_DTYPES = {"labels": np.uint8, "instances": np.uint32}
#: In-plane chunk edge of outputs: 1 MB uint8 chunks, small enough to view remotely.
_CHUNK_YX = 512


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

    def predictor(self, model: SAM4EM) -> SlicePredictor:
        """A predictor for this job's slices; reuse it for all blocks one process runs."""
        plan = plan_tiling(self.shape[1:], model.image_size, self.tile_shape, self.halo)
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
            with open_output(self.target, key, mode="r+") as out:
                out[block.write] = buffer
        if self.input_copy is not None:
            with open_output(self.input_copy, None, mode="r+") as out:
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
        predictor.reset()
        selection = list(self.class_indices)
        for z in order:
            probs = predictor(np.asarray(volume[z]))[selection]
            if tick is not None:
                tick()
            if z in keep:
                yield z, probs

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
                yield z, spill[z - block.write.start] + probs / 2
        finally:
            shutil.rmtree(spill_path, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    """A prepared run: what to compute (``job``), which blocks are left and where results go.

    ``written`` is the file being filled: the output itself, or its hidden sibling that replaces it
    when complete (``swap``). ``keys`` are the output's arrays; for instances, blocks go to a temporary
    label store (``job.target``) and the output is filled at the end. ``complete``: nothing is left
    but, maybe, the swap (a run that stopped between marking its output complete and swapping it in).
    """

    job: BlockJob
    blocks: tuple[ZBlock, ...]
    done: frozenset[int]
    complete: bool
    output: Path
    written: Path
    keys: tuple[str | None, ...]
    swap: bool
    output_type: OutputType
    min_size: int
    watershed: bool

    @property
    def todo(self) -> tuple[ZBlock, ...]:
        return tuple(b for b in self.blocks if b.index not in self.done)

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


def _partial_sibling(path: Path) -> Path:
    # Keeps the extension, so the format is the same; hidden so it does not look like a result.
    return path.with_name(f".{path.stem}.sam4em-partial{path.suffix}")


def _labels_store(written: Path) -> Path:
    return written.with_name(f"{written.name}.partial-labels.zarr")


def _sidecar(path: Path) -> Path:
    """The JSON attrs file of a single-file output without its own metadata (TIFF, MRC)."""
    return path.with_name(path.name + ".attrs.json")


def _remove(path: Path) -> None:
    """Delete a file or folder, and its attrs sidecar if there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    _sidecar(path).unlink(missing_ok=True)


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``new`` by renaming; a folder cannot replace another in one
    rename, so the old output is renamed aside first and deleted last."""
    old = target.with_name(f".{target.name}.sam4em-old")
    _remove(old)
    if target.exists():
        os.replace(target, old)
    if _sidecar(target).exists():
        os.replace(_sidecar(target), _sidecar(old))
    os.replace(new, target)
    if _sidecar(new).exists():
        os.replace(_sidecar(new), _sidecar(target))
    _remove(old)


def _split(path: str | os.PathLike[str], key: str | None) -> tuple[str, str | None]:
    """(path, key) from a ``"vol.h5:key"`` spec; kept a string, as ``precomputed://`` is no file path."""
    spec = os.fspath(path)
    if key is None:
        spec, key = parse_path_key(spec)
    if not spec.startswith(PRECOMPUTED_SCHEME):
        # Absolute, so that workers started elsewhere (dask) find the same files.
        spec = os.path.abspath(spec)
    return spec, key or None


def _output_format(path: Path, output_type: OutputType, distributed: bool) -> str:
    suffix = path.suffix.lower()
    fmt = SUFFIX_FORMATS.get(suffix)
    if fmt is None or fmt == "images":
        raise VolumeError(
            f"{path}: unknown output format {suffix or '(no extension)'!r} "
            "(use .zarr (recommended for large volumes), .h5, .n5, .tif or .mrc)"
        )
    if output_type == "probs" and suffix not in CONTAINER_SUFFIXES:
        raise VolumeError(
            f"{path}: probabilities are stored as one array per class and need a container "
            "(use .zarr, .h5 or .n5, or write labels/instances)"
        )
    if distributed and output_type != "instances" and fmt not in ("zarr", "n5"):
        raise VolumeError(
            f"{path}: several processes can only write chunked stores at once (use .zarr or .n5)"
        )
    return fmt


def _output_keys(
    fmt: str, key: str | None, output_type: OutputType, names: Sequence[str]
) -> tuple[str | None, ...]:
    if output_type == "probs":
        return tuple(f"{key.strip('/')}/{name}" if key else name for name in names)
    if fmt in ("hdf5", "zarr", "n5"):
        return (key or output_type,)
    return (key,)  # single-volume formats: create_volume refuses a key with a clear message


def _class_names(model: SAM4EM) -> list[str]:
    names = [str(n) for n in getattr(model, "class_names", None) or []]
    if len(names) == model.num_classes:
        return names
    return [f"class{i + 1}" for i in range(model.num_classes)]


def _select_classes(names: list[str], classes: Sequence[str] | None) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(len(names)))
    if isinstance(classes, str):
        classes = [classes]
    unknown = [c for c in classes if c not in names]
    if unknown or not classes:
        raise ValueError(
            f"unknown class(es) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"the model predicts {', '.join(names)}"
        )
    return tuple(dict.fromkeys(names.index(c) for c in classes))


def _z_chunk(block_size: int) -> int:
    """Largest divisor of ``block_size`` up to 16: chunks never straddle two blocks, so blocks can be
    written by separate processes, and stay shallow enough for slice-wise viewing."""
    return max(d for d in range(1, min(block_size, 16) + 1) if block_size % d == 0)


def _read_record(path: Path, key: str | None) -> dict[str, Any] | None:
    """{"run": record, "complete": bool, "done": block indices} of a sam4em output, else None."""
    try:
        with open_output(path, key) as volume:
            attrs = dict(volume.attrs)
    except VolumeError:
        return None
    if RUN_RECORD not in attrs:
        return None
    return {
        "run": json.loads(str(attrs[RUN_RECORD])),
        "complete": bool(attrs.get(COMPLETE, False)),
        "done": frozenset(int(b) for b in np.asarray(attrs.get(BLOCKS_DONE, []), dtype=np.int64).ravel()),
    }


def _mark(path: Path, keys: Sequence[str | None], **values: Any) -> None:
    for key in keys:
        with open_output(path, key, mode="r+") as volume:
            for name, value in values.items():
                volume.attrs[name] = value


def mark_done(run: Run, done: set[int] | frozenset[int]) -> None:
    """Record finished blocks in the attrs of the arrays blocks are written to."""
    _mark(run.job.target, run.job.keys, **{BLOCKS_DONE: sorted(int(i) for i in done)})


def _create(
    path: Path,
    keys: Sequence[str | None],
    shape: tuple[int, int, int],
    dtype: Any,
    chunks: tuple[int, int, int],
    voxel_size: Any,
    attrs: dict[str, Any],
) -> None:
    for key in keys:
        create_volume(path, shape, dtype, key=key, chunks=chunks, voxel_size=voxel_size, attrs=attrs).close()


@contextmanager
def prepare_run(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    model: ModelSource,
    *,
    input_key: str | None = None,
    output_key: str | None = None,
    classes: Sequence[str] | None = None,
    output_type: OutputType = "probs",
    probs_dtype: ProbsDtype = "float16",
    direction: Direction = "both",
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    block_size: int = 32,
    overlap: int | None = None,
    threshold: float = 0.5,
    min_size: int = 0,
    watershed: bool = False,
    distributed: bool = False,
    ome: bool = False,
) -> Iterator[tuple[Run, SAM4EM]]:
    """Validate the options, claim the output, create (or reopen, to resume) it and plan its blocks.

    The arguments are those of :func:`segment_to_file`; ``distributed`` refuses output formats
    several processes cannot write at once. A context manager: yields the run and the loaded model,
    and holds the output's claim (:func:`sam4em.claim.claim_output`) until the ``with`` block ends,
    so a second run on the same output is refused while this one writes it.
    """
    device = resolve_device(device)  # a device this machine lacks is refused before the model loads
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = load_model(source)
    if device is None and not distributed:  # Dask workers keep their own default placement
        device = device_for(model)
    if device is not None:
        model = model.to(device)
    if output_type not in ("probs", "labels", "instances"):
        raise ValueError(f"output_type must be 'probs', 'labels' or 'instances', got {output_type!r}")
    if probs_dtype not in _PROBS_DTYPES:
        raise ValueError(f"probs_dtype must be 'float16', 'float32' or 'uint8', got {probs_dtype!r}")
    z_orders(1, direction)  # raises the error for an unknown direction
    in_spec, in_key = _split(input_path, input_key)
    out_spec, out_key = _split(output_path, output_key)
    out_path = Path(out_spec)
    fmt = _output_format(out_path, output_type, distributed)
    ome = ome or out_path.name.lower().endswith(OME_SUFFIX)
    if ome and (fmt != "zarr" or out_key):
        raise VolumeError(f"{out_path}: OME-Zarr outputs are whole .zarr stores (use out{OME_SUFFIX}, without a key)")
    if not in_spec.startswith(PRECOMPUTED_SCHEME) and resolve_path(out_path) == resolve_path(in_spec):
        raise VolumeError(f"{out_path}: is the input volume; write the segmentation to another file")
    with open_volume(in_spec, in_key) as volume:  # mode "r": the input is never opened for writing
        shape, voxel_size, input_dtype = volume.shape, volume.voxel_size, volume.dtype
        bounds = volume_percentiles(volume)
    names = _class_names(model)
    indices = _select_classes(names, classes)
    selected = [names[i] for i in indices]
    memory = getattr(model, "memory", None)
    overlap = (memory.capacity if memory is not None else 0) if overlap is None else overlap
    blocks = z_blocks(shape[0], block_size, overlap)
    plan = plan_tiling(shape[1:], model.image_size, tile_shape, halo)  # fails early on a bad tile/halo
    keys = ome_output_keys(output_type, selected) if ome else _output_keys(fmt, out_key, output_type, selected)
    weights = digest_state(model.state_dict())
    record = {
        "sam4em_version": __version__,
        "input": in_spec,
        "input_key": in_key,
        "model_base": getattr(model, "spec_name", type(model).__name__),
        "model_source": source,
        # The weights themselves, not their path: a run folder retrained in place is another model.
        "model_weights": weights,
        "class_names": selected,
        "ome_zarr": ome,
        "output_type": output_type,
        "probs_dtype": probs_dtype if output_type == "probs" else None,
        "direction": direction,
        "tile_shape": list(plan.tile_shape),
        "halo": list(plan.halo),
        "block_size": block_size,
        "overlap": overlap,
        "intensity_bounds": list(bounds),
        "threshold": threshold,
        "min_size": min_size if output_type == "instances" else None,
        "watershed": watershed if output_type == "instances" else None,
    }

    with claim_output(out_path):  # from here on the output's files are written
        written, swap, fresh = _choose_target(out_path, keys, record, overwrite=overwrite, resume=resume)
        instances = output_type == "instances"
        stage: Literal["probs", "labels"] = "probs" if output_type == "probs" else "labels"
        job = BlockJob(
            input_path=in_spec,
            input_key=in_key,
            shape=shape,
            bounds=bounds,
            class_indices=indices,
            direction=direction,
            tile_shape=plan.tile_shape,
            halo=plan.halo,
            batch_size=batch_size,
            device=str(device) if device is not None else None,
            stage=stage,
            dtype=np.dtype(_PROBS_DTYPES[probs_dtype] if stage == "probs" else np.uint8).name,
            threshold=threshold,
            target=_labels_store(written) if instances else written,
            keys=(None,) if instances else keys,
            model_weights=weights,
            input_copy=written if ome else None,
        )
        chunks = (_z_chunk(block_size), _CHUNK_YX, _CHUNK_YX)
        attrs = {RUN_RECORD: json.dumps(record), COMPLETE: False}
        progress_attrs = {**attrs, BLOCKS_DONE: []}
        complete = False
        done: frozenset[int] = frozenset()
        if fresh:
            _remove(written)
            dtype = job.dtype if output_type == "probs" else _OUTPUT_DTYPES[output_type]
            if ome:
                create_ome_output(
                    written, shape=shape, input_dtype=input_dtype, output_type=output_type, classes=selected,
                    dtype=dtype, chunks=chunks, voxel_size=voxel_size, attrs=attrs if instances else progress_attrs,
                )  # fmt: skip
            else:
                _create(written, keys, shape, dtype, chunks, voxel_size, attrs if instances else progress_attrs)
        else:
            found = _read_record(written, keys[0])
            complete = found is not None and found["complete"]
            done = found["done"] if found is not None else frozenset()
        if complete:
            done = frozenset(b.index for b in blocks)
        elif instances:
            found = _read_record(job.target, None)
            if fresh or found is None or not _same_run(found["run"], record):
                _remove(job.target)
                _create(job.target, (None,), shape, np.uint8, chunks, voxel_size, progress_attrs)
            else:
                done = found["done"]
        run = Run(
            job=job,
            blocks=blocks,
            done=done,
            complete=complete,
            output=out_path,
            written=written,
            keys=keys,
            swap=swap,
            output_type=output_type,
            min_size=min_size,
            watershed=watershed,
        )
        yield run, model


def _choose_target(
    output: Path, keys: Sequence[str | None], record: dict[str, Any], *, overwrite: bool, resume: bool
) -> tuple[Path, bool, bool]:
    """(file to write, swap it in at the end, start it fresh) for the existing files and options.

    ``resume`` continues a partial output only when its run record (model weights and every option
    that changes the result) equals this run's; a partial of another run is refused, never mixed in.
    """
    sibling = _partial_sibling(output)
    if resume and sibling.exists():
        found = _read_record(sibling, keys[0])
        if found is not None and _same_run(found["run"], record):
            if overwrite:
                return sibling, True, False
            raise VolumeError(
                f"{output}: an interrupted --overwrite run left {sibling.name} beside it; "
                "rerun with --overwrite --resume to finish it"
            )
        if found is not None:  # a partial holding blocks of another run: they must not be mixed in
            raise _mixed_runs(sibling, found["run"], record)
    if not output.exists():
        return output, False, True
    if not (resume or overwrite):
        raise VolumeError(
            f"{output}: already exists (pass overwrite=True / --overwrite to replace it, "
            "or resume=True / --resume to finish an interrupted run)"
        )
    if resume:
        found = _read_record(output, keys[0])
        if found is not None and _same_run(found["run"], record):
            if not (found["complete"] and overwrite):
                return output, False, False
        elif found is None and not overwrite:
            raise VolumeError(
                f"{output}: is not a sam4em output, so there is nothing to resume; "
                "pass --overwrite without --resume to replace it"
            )
        elif found is not None and not (found["complete"] and overwrite):
            raise _mixed_runs(output, found["run"], record)
    return sibling, True, True


#: Run-record entries that do not change the result: the weights' digest stands for the model, so the
#: same model may come back as a loaded object, a run folder path or a name.
_PROVENANCE = frozenset({"model_source"})


def _same_run(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return not set(mismatches(found, wanted)) - _PROVENANCE


def _mixed_runs(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> VolumeError:
    """The refusal to resume a partial output that another run (model or options) started."""
    changed = ", ".join(
        "model weights" if k == "model_weights" else k for k in mismatches(found, wanted) if k not in _PROVENANCE
    )
    return VolumeError(
        f"{path}: was started by another run (different {changed}); resuming would mix the two runs' "
        "blocks: rerun with the same model and options, or pass --overwrite without --resume to start over"
    )


def _write_instances(run: Run) -> None:
    """Instance ids of the whole label store, written to the output block by block (in RAM, see above)."""
    with open_volume(run.job.target, None) as store:
        labels = store[:, :, :]
    instances = np.zeros(labels.shape, dtype=np.uint32)
    next_id = 0
    ranges = []  # per class, its ids: so readers can tell the classes apart
    for value in range(1, len(run.job.class_indices) + 1):
        ids = probs_to_instances(labels == value, min_size=run.min_size, watershed=run.watershed)
        found = ids > 0
        instances[found] = ids[found] + np.uint32(next_id)
        ranges.append([next_id + 1, next_id + int(ids.max(initial=0))])
        next_id = ranges[-1][1]
    for value, key in enumerate(run.keys, start=1):
        # OME-Zarr outputs hold each class's instances apart (labels/<class>); others all in one array.
        ids = instances if len(run.keys) == 1 else np.where(labels == value, instances, 0)
        with open_output(run.written, key, mode="r+") as out:
            for block in run.blocks:
                out[block.write] = ids[block.write]
            out.attrs["sam4em_instances"] = next_id
            out.attrs[INSTANCE_RANGES] = ranges


def finish_run(run: Run) -> Path:
    """After all blocks: instances if asked, mark the output complete, swap it in, clean up."""
    if not run.complete:
        if run.output_type == "instances":
            _write_instances(run)
            _remove(run.job.target)
        _mark(run.written, run.keys, **{COMPLETE: True})
    if run.swap:
        _swap_in(run.written, run.output)
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


def segment_to_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    model: ModelSource,
    *,
    input_key: str | None = None,
    output_key: str | None = None,
    classes: Sequence[str] | None = None,
    output_type: OutputType = "probs",
    probs_dtype: ProbsDtype = "float16",
    direction: Direction = "both",
    tile_shape: tuple[int, int] | None = None,
    halo: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    block_size: int = 32,
    overlap: int | None = None,
    threshold: float = 0.5,
    min_size: int = 0,
    watershed: bool = False,
    ome: bool = False,
    progress: ProgressCallback | None = None,
    stop: StopSignal | None = None,
) -> Path:
    """Segment the (Z, Y, X) volume at ``input_path`` into ``output_path`` with bounded memory.

    Args:
        input_path: any format ``open_volume`` reads; ``"vol.h5:raw"`` carries the key.
        output_path: .zarr, .h5, .n5, .tif or .mrc (see the module docstring for the layout).
        model: a loaded model, or a run folder / model name for ``load_model``.
        classes: names of the classes to write (default all, in the model's order).
        output_type: ``"probs"``, ``"labels"`` or ``"instances"``.
        probs_dtype: storage of probabilities: ``"float16"``, ``"float32"`` or ``"uint8"`` (p x 255).
        direction: ``"forward"``, ``"backward"`` or ``"both"`` (mean of the two passes).
        tile_shape, halo: in-plane (Y, X) tiling, see :func:`sam4em.inference.predictor.plan_tiling`.
        batch_size: windows of one slice per model call.
        device: torch device to run on (default: where the model is if that is a GPU, else CUDA
            when available, else the CPU: :func:`sam4em.devices.device_for`; logged at INFO on the
            ``sam4em.inference.streaming`` logger).
        overwrite: replace an existing output (atomically, when the new one is complete).
        resume: continue a partial output written with the same options.
        block_size: slices per z-block; memory grows with it (one block of output is held).
        overlap: warm-up slices per block side; default the model's memory capacity (0 without memory).
        threshold: probability above which a voxel is labelled.
        min_size, watershed: instance options, see :func:`probs_to_instances`.
        ome: write OME-Zarr (NGFF 0.5) with the input, labels/<class> and pyramids
            (:mod:`sam4em.io.ome_zarr_output`); implied by an ``.ome.zarr`` output.
        progress: called with (slices predicted, total) after each slice.
        stop: checked before each block; when set, :class:`Interrupted` is raised.

    Returns:
        ``output_path`` (without key), complete.

    Raises:
        Interrupted: when ``stop`` was set; finished blocks are kept for ``resume=True``.
        VolumeError: for unreadable input, refused outputs or outputs that already exist.
        ValueError: for invalid options.
    """
    with prepare_run(
        input_path,
        output_path,
        model,
        input_key=input_key,
        output_key=output_key,
        classes=classes,
        output_type=output_type,
        probs_dtype=probs_dtype,
        direction=direction,
        tile_shape=tile_shape,
        halo=halo,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        resume=resume,
        block_size=block_size,
        overlap=overlap,
        threshold=threshold,
        min_size=min_size,
        watershed=watershed,
        ome=ome,
    ) as (run, loaded):
        # Said once every check has passed, so a refused run says only why (the CLI shows INFO records).
        _log.info("segmenting on %s", describe_device(next(loaded.parameters()).device))
        counter = SliceCounter(run, progress)
        done = set(run.done)
        if run.todo:
            predictor = run.job.predictor(loaded)
            with open_volume(run.job.input_path, run.job.input_key) as volume:
                for block in run.todo:
                    if stop_requested(stop):
                        raise Interrupted(run.output, len(done), len(run.blocks))
                    run.job.run(block, volume, predictor, counter.tick)
                    done.add(block.index)
                    mark_done(run, done)
        return finish_run(run)
