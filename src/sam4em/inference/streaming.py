"""`segment_to_file`: segment a volume of any size from file to file, in z-blocks, resumably.

The input is read slice by slice (never whole) and the output written block by block, so peak
memory depends on the slice size and ``block_size``, not on the number of slices:

* the volume is cut along z into blocks (:func:`sam4em.inference.tiling.z_blocks`); each block owns
  ``block_size`` slices and also reads ``overlap`` warm-up slices on each side, whose predictions
  only fill the memory bank and are discarded. Blocks are independent, which is what makes resuming
  and distributed processing (:mod:`sam4em.inference.distributed`) simple;
* ``direction="both"`` runs the forward pass of a block first and keeps its probabilities for the
  owned slices (in a GPU's memory where a quarter of its free memory holds them, else in a temporary
  Zarr store beside the output, ``<output>.partial-forward-<i>.zarr``, deleted after the block), then
  the backward pass, which is fused (mean) with them slice by slice;
* with ``streams`` K > 1 (:class:`sam4em.inference.options.SegmentOptions`; automatic on a GPU) K blocks
  run as z-streams in lockstep: each model call holds a tile batch of every stream, each stream has its
  own memory bank, and a stream leaves the batch when its block ends
  (:func:`sam4em.inference.predictor.predict_streams`). The result equals one block at a time within
  float rounding of the larger batches (1.2e-7 measured, ``tests/test_z_streams.py`` asserts 1e-5);
* the finished block is held in the output dtype (``block_size x C x Y x X`` values) and written in one
  go by a background thread while the next wave of blocks is predicted (so up to two waves are held),
  and the output is closed after every block so each finished block is on disk.

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
model base, run dir or name, the digest of its weights, the intensity bounds, the sam4em version and
every option that changes the result: class names, direction, tile, halo, block size, overlap, ...,
see :func:`sam4em.inference.options.recorded_options`), ``sam4em_blocks_done`` (indices of finished
z-blocks) and ``sam4em_complete`` (False until the whole output is written), so a reader can tell
partial from finished outputs.

Safety: the request is checked before the model loads (:func:`sam4em.inference.request.check_request`,
also run by ``sam4em segment``); the input is only ever opened read-only and may not be the output.
An existing output is replaced only with ``overwrite=True``; the new one is then written to a hidden
sibling (``.<name>.sam4em-partial<ext>``) and swapped in by renaming once complete, so stopping midway
leaves the old output intact. ``resume=True`` continues a partial output written with the same model
weights (compared by digest, :func:`sam4em.fingerprint.digest_state`) and options, and refuses any
other partial output (only unfinished blocks are redone, and the result equals an uninterrupted run
exactly). One run at a time writes an output: :func:`sam4em.inference.run.prepare_run` holds the
output's claim (:mod:`sam4em.claim`) while it runs, and a second run on the same output is refused at
once. ``stop`` (a callable or a ``threading.Event``, e.g. set by the CLI's SIGINT handler) is checked
before each block; when set, finished blocks stay on disk and :class:`Interrupted` is raised.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sam4em.devices import describe_device
from sam4em.inference.options import OutputType, ProbsDtype, SegmentOptions
from sam4em.inference.predictor import ProgressCallback
from sam4em.inference.request import ModelSource
from sam4em.inference.run import (
    Interrupted,
    Run,
    SliceCounter,
    StopSignal,
    finish_run,
    mark_done,
    prepare_run,
    stop_requested,
)
from sam4em.inference.tiling import ZBlock
from sam4em.io import open_volume
from sam4em.io.output_record import BLOCKS_DONE, COMPLETE, RUN_RECORD
from sam4em.models import SegmentationModel

__all__ = [
    "BLOCKS_DONE",
    "COMPLETE",
    "RUN_RECORD",
    "Interrupted",
    "ModelSource",
    "OutputType",
    "ProbsDtype",
    "SegmentOptions",
    "StopSignal",
    "segment_to_file",
]

_log = logging.getLogger(__name__)


def segment_to_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    model: ModelSource,
    options: SegmentOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    stop: StopSignal | None = None,
) -> Path:
    """Segment the (Z, Y, X) volume at ``input_path`` into ``output_path`` with bounded memory.

    Args:
        input_path: any format ``open_volume`` reads; ``"vol.h5:raw"`` carries the key.
        output_path: .zarr, .h5, .n5, .tif or .mrc (see the module docstring for the layout).
        model: a loaded model, or a run folder / model name for ``load_model``.
        options: output type, classes, direction, tiling, blocks, overwrite/resume, device ...
            (:class:`sam4em.inference.options.SegmentOptions`; default: float16 probabilities of all
            classes, both directions). The device is logged at INFO on this module's logger.
        progress: called with (slices predicted, total) after each slice.
        stop: checked before each block (each group of ``streams`` blocks); when set,
            :class:`Interrupted` is raised.

    Returns:
        ``output_path`` (without key), complete.

    Raises:
        Interrupted: when ``stop`` was set; finished blocks are kept for ``resume=True``.
        VolumeError: for unreadable input, refused outputs or outputs that already exist.
        ValueError: for invalid options.
    """
    with prepare_run(input_path, output_path, model, options or SegmentOptions()) as (run, loaded):
        # Said once every check has passed, so a refused run says only why (the CLI shows INFO records).
        streams = run.options.streams or 1
        _log.info("segmenting on %s, %s", describe_device(next(loaded.parameters()).device),
                  "one z-block at a time" if streams == 1 else f"{streams} z-blocks in lockstep")
        if run.todo:
            with open_volume(run.job.input_path, run.job.input_key) as volume:
                _run_waves(run, loaded, volume, SliceCounter(run, progress), stop)
        return finish_run(run)


def _run_waves(run: Run, model: SegmentationModel, volume: Any, counter: SliceCounter, stop: StopSignal | None) -> None:
    """Predict the blocks left, a wave (``streams`` blocks) at a time, while a background thread writes
    the previous wave: the model does not wait for compression and disk (or for the input copy of an
    OME-Zarr output). A wave counts as done, and is recorded, once it is written; an error or a stop
    lets the wave being written finish first."""
    predictor = run.job.predictor(model)
    done = set(run.done)
    writing: tuple[Future[None], tuple[ZBlock, ...]] | None = None

    def settle() -> None:
        nonlocal writing
        if writing is not None:
            future, wave = writing
            writing = None
            future.result()  # a failed write raises here
            done.update(block.index for block in wave)
            mark_done(run, done)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam4em-write") as writer:
        try:
            for wave in run.waves:
                if stop_requested(stop):
                    settle()
                    raise Interrupted(run.output, len(done), len(run.blocks))
                outputs = run.job.predict(wave, volume, predictor, counter.tick)
                settle()
                writing = (writer.submit(run.job.write, wave, outputs), wave)
        except BaseException:
            # Finish (and record) the wave being written, but report the error that stopped the run.
            try:
                settle()
            except Exception:
                _log.exception("writing the last z-blocks failed as well")
            raise
        settle()
