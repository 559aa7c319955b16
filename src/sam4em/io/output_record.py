"""The attrs `sam4em segment` writes into its outputs, and reading them back.

Every array of a segmentation output (see :mod:`sam4em.inference.streaming`) carries in its attrs:

* ``RUN_RECORD``: a JSON string of the run's options, among them ``output_type`` ("probs",
  "labels" or "instances"), ``class_names`` (the classes written, in order) and ``probs_dtype``;
* ``COMPLETE``: False until the whole output is written; ``BLOCKS_DONE``: the finished z-blocks;
* instance outputs also ``INSTANCE_RANGES``: per class, in ``class_names`` order, the first and last
  instance id ``[first, last]`` it owns (ids are unique across classes; ``last < first`` for none).

Readers (``sam4em evaluate``) use them to refuse unfinished outputs and to know which values
belong to which class. They live here, beside the formats, so reading them needs no model code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam4em.io.base import Volume, VolumeError

__all__ = [
    "BLOCKS_DONE",
    "COMPLETE",
    "INSTANCE_RANGES",
    "RUN_RECORD",
    "OutputRecord",
    "read_output_record",
    "require_complete",
]

COMPLETE = "sam4em_complete"
BLOCKS_DONE = "sam4em_blocks_done"
RUN_RECORD = "sam4em_run"
INSTANCE_RANGES = "sam4em_instance_ranges"


@dataclass(frozen=True)
class OutputRecord:
    """What a `sam4em segment` output says about itself."""

    run: dict[str, Any]
    complete: bool
    #: Indices of the z-blocks written so far.
    done: frozenset[int]
    #: (first, last) instance id per class of ``class_names``; None when not recorded.
    instance_ranges: tuple[tuple[int, int], ...] | None

    @property
    def output_type(self) -> str:
        return str(self.run.get("output_type", ""))

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self.run.get("class_names") or []]

    @property
    def probs_dtype(self) -> str | None:
        value = self.run.get("probs_dtype")
        return None if value is None else str(value)

    @property
    def blocks_done(self) -> int:
        return len(self.done)

    def blocks_total(self, n_slices: int) -> int:
        """The number of z-blocks of a run over ``n_slices`` slices."""
        size = int(self.run.get("block_size") or n_slices or 1)
        return max(1, -(-n_slices // size))


def read_output_record(attrs: Mapping[str, Any]) -> OutputRecord | None:
    """The record of a sam4em output from its attrs; None for a volume sam4em did not write."""
    if RUN_RECORD not in attrs:
        return None
    try:
        run = json.loads(str(attrs[RUN_RECORD]))
    except json.JSONDecodeError:
        return None
    if not isinstance(run, dict):
        return None
    ranges = attrs.get(INSTANCE_RANGES)
    return OutputRecord(
        run=run,
        complete=bool(attrs.get(COMPLETE, False)),
        done=frozenset(int(b) for b in np.asarray(attrs.get(BLOCKS_DONE, []), dtype=np.int64).ravel()),
        instance_ranges=None if ranges is None else tuple((int(a), int(b)) for a, b in np.asarray(ranges).reshape(-1, 2)),
    )


def require_complete(record: OutputRecord, volume: Volume) -> None:
    """Refuse the unfinished output `volume` (an interrupted `sam4em segment`): its missing blocks read as empty."""
    if not record.complete:
        where = f"{volume.path}:{volume.key}" if volume.key else str(volume.path)
        total = record.blocks_total(int(volume.shape[0]))
        raise VolumeError(
            f"{where}: is an unfinished `sam4em segment` output ({record.blocks_done} of {total} z-blocks written); "
            "finish it by rerunning the same `sam4em segment` command with --resume"
        )
