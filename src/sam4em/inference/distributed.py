"""`segment_to_file_dask`: the z-blocks of `segment_to_file` as tasks on a dask.distributed cluster.

The volume is cut into the same independent z-blocks (:func:`sam4em.inference.tiling.z_blocks`), so
the result equals the single-process one (up to float rounding of a different thread count; the tests
find it bit-identical). Each task loads the model (by run folder or name with ``load_model``, once per
worker process; a model object is sent to the workers instead), segments one block and writes it
straight into the chunked output: chunks never straddle two blocks (their z size divides
``block_size``), so workers write disjoint chunks concurrently. Probabilities and labels therefore need
a .zarr (or .n5) output; instances may go to any format, because their blocks go to a temporary Zarr
label store and the client writes the output at the end. The client keeps one task per worker thread
in flight, checks ``stop`` as tasks finish, and records finished blocks in the output's attrs as each
task ends, so ``resume=True`` (here or in `segment_to_file`) redoes only unfinished blocks.

Locally, ``workers=N`` starts a ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``
(processes, because models are not thread-safe; dask limits each worker to one BLAS/OpenMP thread).
On a cluster, start the workers with dask-jobqueue (SLURM, PBS, LSF, ...) or dask-kubernetes and pass
the scheduler address; input and output paths must be visible to every worker (a shared filesystem)::

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(cores=1, processes=1, memory="16GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=8)  # 8 SLURM jobs, one worker each
    segment_to_file_dask("raw.zarr", "seg.zarr", "runs/mito",
                         SegmentOptions(output_type="labels", device="cuda"),
                         scheduler_address=cluster.scheduler_address)

With dask-kubernetes, ``KubeCluster(name="sam4em", image=..., n_workers=8)`` gives
``cluster.scheduler_address`` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, as_completed

from sam4em.fingerprint import digest_state
from sam4em.inference.block_job import BlockJob
from sam4em.inference.options import SegmentOptions
from sam4em.inference.predictor import ProgressCallback
from sam4em.inference.request import ModelSource
from sam4em.inference.run import (
    Interrupted,
    SliceCounter,
    StopSignal,
    finish_run,
    mark_done,
    prepare_run,
    stop_requested,
)
from sam4em.inference.tiling import ZBlock
from sam4em.io import VolumeError, open_volume
from sam4em.models import SegmentationModel, load_model

__all__ = ["segment_to_file_dask"]


@lru_cache(maxsize=2)
def _cached_model(source: str, device: str | None, weights: str) -> SegmentationModel:
    """The model at `source`, loaded once per worker process (loading takes seconds), refused unless
    its weights are those the run was started with (a run folder replaced meanwhile would mix models)."""
    model = load_model(source, device=device)
    if digest_state(model.state_dict()) != weights:
        raise VolumeError(
            f"{source}: the model changed after this segmentation started, so its blocks would mix two "
            "models; rerun with --resume once the model is the one it started with, or start over"
        )
    return model


def _segment_wave(job: BlockJob, blocks: tuple[ZBlock, ...], model: SegmentationModel | str) -> list[int]:
    """The task: segment z-blocks (as streams in lockstep, `SegmentOptions.streams`) into the output;
    returns their indices."""
    loaded = _cached_model(model, job.device, job.model_weights) if isinstance(model, str) else model
    if job.device is not None:
        loaded = loaded.to(job.device)
    with open_volume(job.input_path, job.input_key) as volume:
        job.run(blocks, volume, job.predictor(loaded))
    return [block.index for block in blocks]


@contextmanager
def _client(workers: int, scheduler_address: str | None) -> Iterator[Client]:
    if scheduler_address is not None:
        with Client(scheduler_address) as client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # No dashboard: it needs a free port and bokeh, and nobody watches a per-call cluster.
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def segment_to_file_dask(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    model: ModelSource,
    options: SegmentOptions | None = None,
    *,
    workers: int = 2,
    scheduler_address: str | None = None,
    progress: ProgressCallback | None = None,
    stop: StopSignal | None = None,
) -> Path:
    """`segment_to_file` with its z-blocks run as dask tasks; same options, same result.

    Args:
        input_path, output_path, model, options: as for
            :func:`sam4em.inference.streaming.segment_to_file`; pass ``model`` as a run folder or model
            name so each worker loads it itself.
        workers: processes of a local cluster (ignored with ``scheduler_address``).
        scheduler_address: an existing scheduler, e.g. ``SLURMCluster(...).scheduler_address``.
        progress: called with (slices predicted, total) as blocks finish.
        stop: checked as blocks finish; when set, running blocks finish, no new ones start, and
            :class:`Interrupted` is raised.

    Returns:
        The output path, complete.
    """
    options = options or SegmentOptions()
    with prepare_run(input_path, output_path, model, options, distributed=True) as (run, loaded):
        if not run.todo:
            return finish_run(run)
        counter = SliceCounter(run, progress)
        done = set(run.done)
        pending = iter(run.waves)
        with _client(workers, scheduler_address) as client:
            reference: Any
            if isinstance(model, (str, os.PathLike)):
                # A run folder as an absolute path, so workers started in another directory find it.
                reference = os.path.abspath(model) if Path(model).exists() else os.fspath(model)
            else:
                reference = client.scatter(loaded, broadcast=True)
            futures = as_completed()

            def submit_next() -> None:
                wave = next(pending, None)
                if wave is not None:
                    futures.add(client.submit(_segment_wave, run.job, wave, reference, pure=False))

            # One task per worker thread: few enough that a stop only waits for blocks already running.
            for _ in range(max(1, sum(client.nthreads().values()))):
                submit_next()
            try:
                for future in futures:
                    for index in future.result():
                        done.add(index)
                        counter.tick(run.slices_per_block(run.blocks[index]))
                    # Recorded as each task ends (its chunks are written; the others write other chunks), so a
                    # client killed outright (SIGKILL, a lost node) leaves every finished block recorded.
                    mark_done(run, done)
                    if not stop_requested(stop):
                        submit_next()
            finally:
                mark_done(run, done)
        if len(done) < len(run.blocks):
            raise Interrupted(run.output, len(done), len(run.blocks))
        return finish_run(run)
