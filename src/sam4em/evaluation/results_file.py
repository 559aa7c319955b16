"""The JSON file of evaluation scores: checked before the (long) evaluation, written atomically.

The file may not be one of the inputs (nor inside an input folder such as a Zarr store), replaces an
existing file only with ``overwrite``, and is written to a hidden temporary file beside it that is
renamed into place, so a stopped evaluation never leaves half a JSON file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.atomic import write_atomically
from sam4em.io import resolve_path

__all__ = ["check_results_path", "write_json"]


def _inside(path: Path, folder: Path) -> bool:
    return folder.is_dir() and folder in path.parents


def check_results_path(
    path: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]], overwrite: bool = False
) -> Path:
    """Refuse a results path that is an input, exists (without ``overwrite``) or has no folder to go in.

    ``inputs`` are the files or folders evaluation reads (paths without their ``:key``).
    Returns the path; raises ValueError (FileExistsError for an existing file) with one line.
    """
    target = Path(path)
    resolved = resolve_path(target)
    for source in inputs:
        source_path = resolve_path(source)
        same = resolved == source_path or (target.exists() and os.path.samefile(target, source_path))
        if same or _inside(resolved, source_path):
            raise ValueError(
                f"{target}: is {'an input' if same else 'inside the input ' + str(source)} of this evaluation; "
                "write the scores to another file"
            )
    parent = resolved.parent
    if not parent.exists():
        raise ValueError(f"{target}: folder {parent} does not exist (create it, or write the scores elsewhere)")
    if not parent.is_dir():
        raise ValueError(f"{target}: {parent} is not a folder (write the scores elsewhere)")
    if target.is_dir():
        raise ValueError(f"{target}: is a folder (give a file name, e.g. {target / 'scores.json'})")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target}: already exists (pass overwrite=True / --overwrite to replace it, or choose another name)"
        )
    return target


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str | os.PathLike[str], data: Any, *, overwrite: bool = False) -> None:
    """Write ``data`` as JSON atomically; without ``overwrite`` an existing file is never replaced."""

    def dump(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=_plain)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, dump, overwrite=overwrite)
