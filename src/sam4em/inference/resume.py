"""Which file a run writes, and whether an existing (partial) output may be continued.

``resume`` continues a partial output only when its run record (``sam4em_run``: model weights and every
option that changes the result, :func:`sam4em.inference.options.recorded_options`) equals this run's; a
partial of another run is refused, never mixed in. An ``overwrite`` run writes a hidden sibling that
replaces the output once complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam4em.fingerprint import mismatches
from sam4em.inference.output_files import partial_sibling, read_record
from sam4em.io import VolumeError, list_volumes

__all__ = ["INPUT_FINGERPRINT", "choose_target", "same_run"]


def choose_target(
    output: Path, keys: Sequence[str | None], record: dict[str, Any], *, overwrite: bool, resume: bool
) -> tuple[Path, bool, bool]:
    """(file to write, swap it in at the end, start it fresh) for the existing files and options.

    ``resume`` continues a partial output only when its run record (model weights and every option
    that changes the result) equals this run's; a partial of another run is refused, never mixed in.
    """
    sibling = partial_sibling(output)
    if resume and sibling.exists():
        found = read_record(sibling, keys[0])
        if found is not None and same_run(found.run, record):
            if overwrite:
                return sibling, True, False
            raise VolumeError(
                f"{output}: an interrupted --overwrite run left {sibling.name} beside it; "
                "rerun with --overwrite --resume to finish it"
            )
        if found is not None:  # a partial holding blocks of another run: they must not be mixed in
            raise _mixed_runs(sibling, found.run, record)
    if not output.exists():
        return output, False, True
    # An existing output without resume or overwrite was refused by `check_request` already.
    if resume:
        found = read_record(output, keys[0])
        if found is not None and same_run(found.run, record):
            if not (found.complete and overwrite):
                return output, False, False
        elif found is None and not overwrite:
            raise _nothing_to_resume(output, record)
        elif found is not None and not (found.complete and overwrite):
            raise _mixed_runs(output, found.run, record)
    return sibling, True, True


def _nothing_to_resume(output: Path, record: dict[str, Any]) -> VolumeError:
    """The refusal to resume an output that holds no array this run writes: arrays of other classes or
    another key (another run, named by what differs), another output type's, or no sam4em output at all."""
    other = next((r for key in _keys(output) if (r := read_record(output, key)) is not None), None)
    if other is not None and other.output_type == record.get("output_type"):
        return _mixed_runs(output, other.run, record)
    if other is not None:
        return VolumeError(
            f"{output}: holds a sam4em output of --output-type {other.output_type}, not of this run's; to finish it, "
            "rerun the command that started it (the same options) with --resume"
        )
    return VolumeError(
        f"{output}: is not a sam4em output, so there is nothing to resume; pass --overwrite without --resume to replace it"
    )


def _keys(output: Path) -> list[str | None]:
    try:
        return [*list_volumes(output), None]
    except VolumeError:
        return [None]


#: The run record's entry for the input's content (`sam4em.fingerprint.digest_volume`).
INPUT_FINGERPRINT = "input_fingerprint"
#: Run-record entries that do not change the result: the weights' digest stands for the model, so the
#: same model may come back as a loaded object, a run folder path or a name.
_PROVENANCE = frozenset({"model_source"})
#: Entries named in words in a refusal; the others are options, shown with both values.
_DIGESTS = {"model_weights": "model weights", INPUT_FINGERPRINT: "input content (shape, dtype or slices)"}


def _changed(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    # Outputs written before the input's content was recorded: their resume compares the rest, as before.
    skipped = _PROVENANCE | ({INPUT_FINGERPRINT} if INPUT_FINGERPRINT not in found else set())
    return [key for key in mismatches(found, wanted) if key not in skipped]


def same_run(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether two run records describe the same result (how the model was named aside)."""
    return not _changed(found, wanted)


def _mixed_runs(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> VolumeError:
    """The refusal to resume a partial output that another run (model, input or options) started."""
    changed = ", ".join(
        _DIGESTS[k] if k in _DIGESTS else f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now"
        for k in _changed(found, wanted)
    )
    return VolumeError(
        f"{path}: was started by another run (different {changed}); resuming would mix the two runs' "
        "blocks: rerun with the same input, model and options, or pass --overwrite without --resume to start over"
    )
