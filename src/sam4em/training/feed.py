"""The training feed: DataLoader settings chosen by the device, and the time a step waits for data.

A GPU trained from the main process alone waits for crops, elastic deformation and augmentation
(issue 14: hiera-tiny made 64 steps in 30 s with ``num_workers: 0`` and 113 with 12 workers), so a
config that leaves ``num_workers`` unset gets `default_workers` processes on a CUDA device, kept
alive for the whole stage (``persistent_workers``), writing into pinned memory and each preparing
`PREFETCH` batches ahead. On a CPU the workers would take cores from the model's own threads, so
there are none on machines with two cores and few on larger ones. Every sample is a function of
(seed, stage, index), so the number of workers changes no number of the result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["PREFETCH", "StepTimer", "default_workers", "loader_options"]

#: Batches each worker prepares ahead (torch's default is 2; heavy augmentation varies in time).
PREFETCH = 4


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as cgroups and job schedulers set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(device: torch.device, *, cpus: int | None = None, processes: int | None = None) -> int:
    """Loader processes for one training process on `device` when the config leaves ``num_workers`` unset.

    CUDA: ``min(8, cpus - 1)`` (one core stays with the training loop). CPU: none with two cores or
    fewer, else a quarter of the cores (at most 4), as the model's threads need the rest. `cpus` (by
    default this process's usable CPUs) is shared by `processes` training processes on this machine
    (by default torchrun's ``LOCAL_WORLD_SIZE``, else 1).
    """
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if processes is None else processes
    share = max(1, (_usable_cpus() if cpus is None else cpus) // max(1, processes))
    if device.type == "cuda":
        return max(0, min(8, share - 1))
    return 0 if share <= 2 else min(4, share // 4)


def loader_options(num_workers: int | None, device: torch.device) -> dict[str, Any]:
    """`torch.utils.data.DataLoader` keyword arguments for the training feed on `device`.

    `num_workers` as the config gives it; None: `default_workers`. Pinned memory only on CUDA (it
    makes the host-to-device copy asynchronous; elsewhere it only costs).
    """
    workers = default_workers(device) if num_workers is None else num_workers
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=PREFETCH)
    return options


class StepTimer:
    """Steps per second and the share of step time spent waiting for batches, per logged step.

    `waiting` wraps the ``next(batches)`` of a step; `finish` closes the step (after the optimiser) and
    returns ``(steps_per_s, data_wait)`` over the time since the previous `finish` (or `start`), so
    validation and checkpoints between two steps are left out when `start` is called after them.
    """

    def __init__(self) -> None:
        self._begun = time.perf_counter()
        self._waited = 0.0

    def start(self) -> None:
        """A step begins now."""
        self._begun, self._waited = time.perf_counter(), 0.0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The time inside counts as waiting for data."""
        before = time.perf_counter()
        try:
            yield
        finally:
            self._waited += time.perf_counter() - before

    def finish(self) -> tuple[float, float]:
        """``(steps per second, share of the step spent waiting for data)`` of the step just done."""
        seconds = max(time.perf_counter() - self._begun, 1e-9)
        return 1.0 / seconds, min(1.0, self._waited / seconds)
