"""`SegmentOptions`: every option of a file-to-file segmentation, in one frozen value.

The library (:func:`sam4em.inference.streaming.segment_to_file`), the Dask path
(:func:`sam4em.inference.distributed.segment_to_file_dask`), the CLI (``sam4em segment``) and the napari
plugin all take one ``SegmentOptions``; the run record an output carries (``sam4em_run``) is derived from
it: each field says in its metadata whether it changes the result (then it is recorded, and a resume
with another value is refused) and under which key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sam4em.inference.predictor import yx_pair
from sam4em.inference.segment import Direction, z_orders

__all__ = ["OutputType", "ProbsDtype", "SegmentOptions", "recorded_options"]

OutputType = Literal["probs", "labels", "instances"]
ProbsDtype = Literal["float16", "float32", "uint8"]

_OUTPUT_TYPES = ("probs", "labels", "instances")
_PROBS_DTYPES = ("float16", "float32", "uint8")


def _recorded(key: str | None = None, only_for: OutputType | None = None) -> dict[str, Any]:
    """Metadata of a field that changes the result: recorded in the run record (as ``key``, default its
    name), as ``None`` unless the output type is ``only_for``, so an option without effect never blocks
    a resume."""
    return {"record": key or True, "only_for": only_for}


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment a (Z, Y, X) volume file into an output file (see :mod:`sam4em.inference.streaming`).

    Attributes:
        input_key, output_key: arrays inside containers (a ``"vol.h5:key"`` path carries its own).
        output_type: ``"probs"``, ``"labels"`` or ``"instances"``.
        classes: names of the classes to write (default all, in the model's order); a str is one class.
        probs_dtype: storage of probabilities: ``"float16"``, ``"float32"`` or ``"uint8"`` (p x 255).
        direction: ``"forward"``, ``"backward"`` or ``"both"`` (mean of the two passes).
        tile_shape, halo: in-plane (Y, X) tiling, see :func:`sam4em.inference.predictor.plan_tiling`.
        batch_size: windows of one slice per model call.
        streams: z-blocks advanced in lockstep, so one model call holds ``streams x batch_size`` windows
            (each block keeps its own memory; results equal one block at a time within float rounding,
            see :mod:`sam4em.inference.streaming`). Default: 1 on a CPU; on a GPU enough to fill about
            :data:`sam4em.inference.run.TARGET_WINDOWS` windows per call, as far as the run's blocks,
            free GPU memory and host memory allow (:func:`sam4em.inference.run.choose_streams`).
        device: torch device to run on (default: where the model is if that is a GPU, else CUDA when
            available, else the CPU: :func:`sam4em.devices.device_for`).
        block_size: slices per z-block; memory grows with it (one block of output per stream is held,
            two waves of ``streams`` blocks while one is written in the background).
        overlap: warm-up slices per block side; default the model's memory capacity (0 without memory).
        threshold: probability above which a voxel is labelled.
        min_size, watershed: instance options, see :func:`sam4em.inference.postprocess.probs_to_instances`.
        ome: write OME-Zarr (NGFF 0.5); implied by an ``.ome.zarr`` output.
        compile: compile the model in place (:func:`sam4em.models.compiled.compile_parts`); its first
            calls compile, for minutes. Meant for GPUs: on the 2-core CPU no reliable gain was measured
            (docs/benchmarks.md). Not recorded: the same operations, so results differ by float rounding
            (measured by ``benchmarks/compile_gain.py``). Not for Dask workers.
        overwrite: replace an existing output (atomically, when the new one is complete).
        resume: continue a partial output written with the same model and recorded options.

    Raises:
        ValueError: at construction, for an unknown output type, probability dtype or direction, and
            for a batch size, block size, minimum size or halo out of range (an overlap out of range is
            refused when the blocks are planned).
    """

    input_key: str | None = field(default=None, metadata=_recorded())
    output_key: str | None = None
    output_type: OutputType = field(default="probs", metadata=_recorded())
    #: Recorded as the names of the selected classes (resolved against the model).
    classes: Sequence[str] | None = field(default=None, metadata=_recorded("class_names"))
    probs_dtype: ProbsDtype = field(default="float16", metadata=_recorded(only_for="probs"))
    direction: Direction = field(default="both", metadata=_recorded())
    #: Recorded as resolved by the tiling plan (a default becomes the actual tile and halo).
    tile_shape: tuple[int, int] | None = field(default=None, metadata=_recorded())
    halo: tuple[int, int] | None = field(default=None, metadata=_recorded())
    batch_size: int = 8
    streams: int | None = None
    device: str | None = None
    block_size: int = field(default=32, metadata=_recorded())
    overlap: int | None = field(default=None, metadata=_recorded())
    threshold: float = field(default=0.5, metadata=_recorded())
    min_size: int = field(default=0, metadata=_recorded(only_for="instances"))
    watershed: bool = field(default=False, metadata=_recorded(only_for="instances"))
    ome: bool = field(default=False, metadata=_recorded("ome_zarr"))
    compile: bool = False
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if self.output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'probs', 'labels' or 'instances', got {self.output_type!r}")
        if self.probs_dtype not in _PROBS_DTYPES:
            raise ValueError(f"probs_dtype must be 'float16', 'float32' or 'uint8', got {self.probs_dtype!r}")
        z_orders(1, self.direction)  # raises the error for an unknown direction
        # Hashable and unambiguous: one class given as a str, lists and torch devices normalised.
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, str) else tuple(self.classes)
            object.__setattr__(self, "classes", classes)
        for name in ("tile_shape", "halo"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, yx_pair(value, name))
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))
        if self.streams is not None and (isinstance(self.streams, bool) or not isinstance(self.streams, int) or self.streams < 1):
            raise ValueError(f"streams must be a positive number of z-blocks, got {self.streams!r}; pass e.g. --streams 4")
        for name, least in (("batch_size", 1), ("block_size", 1), ("min_size", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r} (--{name.replace('_', '-')})")
        if self.halo is not None and min(self.halo) < 0:
            raise ValueError(f"halo must be >= 0 pixels, got {list(self.halo)} (--halo)")

    def replace(self, **changes: Any) -> SegmentOptions:
        """A copy with ``changes`` (field names), validated again."""
        return dataclasses.replace(self, **changes)


def recorded_options(options: SegmentOptions) -> dict[str, Any]:
    """The run-record entries of ``options`` (resolved ones: actual classes, tile, halo, overlap)."""
    record = {}
    for f in dataclasses.fields(options):
        key = f.metadata.get("record")
        if key is None:
            continue
        only_for = f.metadata["only_for"]
        value = getattr(options, f.name)
        relevant = only_for is None or options.output_type == only_for
        record[f.name if key is True else key] = (list(value) if isinstance(value, tuple) else value) if relevant else None
    return record
