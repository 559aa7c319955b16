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
from sam4em.io import VolumeError

__all__ = ["choose_target", "same_run"]


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
            raise VolumeError(
                f"{output}: is not a sam4em output, so there is nothing to resume; "
                "pass --overwrite without --resume to replace it"
            )
        elif found is not None and not (found.complete and overwrite):
            raise _mixed_runs(output, found.run, record)
    return sibling, True, True


#: Run-record entries that do not change the result: the weights' digest stands for the model, so the
#: same model may come back as a loaded object, a run folder path or a name.
_PROVENANCE = frozenset({"model_source"})


def same_run(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether two run records describe the same result (how the model was named aside)."""
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
