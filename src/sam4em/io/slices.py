"""Folders of slice images: which files are slices, and their natural (numeric) order."""

from __future__ import annotations

import re
from pathlib import Path

#: Slice images a folder may hold.
SLICE_SUFFIXES = frozenset({".png", ".tif", ".tiff"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key ordering numbers by value: ``2.png`` before ``10.png``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(name) if part
    )


def slice_files(folder: Path) -> list[Path]:
    """The .png/.tif/.tiff files of ``folder`` in natural numeric order (hidden files skipped)."""
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))
