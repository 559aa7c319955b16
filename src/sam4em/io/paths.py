"""Path handling: ``path:key`` splitting, format detection, natural slice order."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sam4em.io.base import VolumeError

#: Formats by file extension (lower case).
SUFFIX_FORMATS = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "images",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".zarr": "zarr",
    ".n5": "n5",
    ".mrc": "mrc",
    ".rec": "mrc",
    ".map": "mrc",
    ".mrcs": "mrc",
}
#: Formats whose files hold several arrays, named by a key.
CONTAINER_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".zarr", ".n5"})
#: Slice images a folder may hold.
SLICE_SUFFIXES = frozenset({".png", ".tif", ".tiff"})
PRECOMPUTED_SCHEME = "precomputed://"

SUPPORTED = (
    ".tif/.tiff (multi-page, OME, ImageJ), .png, .h5/.hdf5/.hdf, .zarr, .n5, .mrc/.rec/.map/.mrcs, "
    "a folder of .png/.tif slices, or a neuroglancer precomputed folder (precomputed://)"
)


def _suffix(path: str) -> str:
    return Path(path.rstrip("/\\")).suffix.lower()


def parse_path_key(spec: str) -> tuple[str, str | None]:
    """Split ``"vol.h5:raw"`` into ``("vol.h5", "raw")``; return ``(spec, None)`` when it holds no key.

    Splits at the last ':' only when the part before it is an existing file or folder or
    ends with a container extension (.h5, .hdf5, .hdf, .zarr, .n5), and never when the
    whole string is an existing path. So Windows drive letters (``C:\\data\\vol.tif``) and
    URLs (``precomputed://...``) are left alone, and ``C:\\data\\vol.h5:raw`` still splits.
    """
    if spec.startswith(PRECOMPUTED_SCHEME) or Path(spec).exists():
        return spec, None
    head, sep, key = spec.rpartition(":")
    is_drive = len(head) == 1 and head.isalpha() and (not key or key[0] in "/\\")
    if not sep or not head or not key or is_drive:
        return spec, None
    if Path(head).exists() or _suffix(head) in CONTAINER_SUFFIXES:
        return head, key
    return spec, None


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


def _missing_reason(path: Path) -> str:
    """Why ``path`` cannot be found: a link that loops or dangles, or no such file."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except FileNotFoundError:
            return f"{path}: is a symbolic link to a missing file ({os.readlink(path)}; fix the link or the path)"
        except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) since
            return f"{path}: is a symbolic link that loops back on itself (point the link at the real file)"
    return f"{path}: no such file or directory (check the path)"


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path with symbolic links resolved; a link loop is a VolumeError, not a RuntimeError."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        raise VolumeError(_missing_reason(Path(path))) from None


def detect_format(path: str) -> tuple[str, Path]:
    """The format of an existing path: 'tiff', 'images', 'hdf5', 'zarr', 'n5', 'mrc' or 'precomputed'.

    Files go by extension; folders by extension (.zarr, .n5), else by what they hold.
    """
    if path.startswith(PRECOMPUTED_SCHEME):
        target = Path(path[len(PRECOMPUTED_SCHEME) :])
        if not target.exists():
            raise VolumeError(_missing_reason(target))
        return "precomputed", target
    target = Path(path)
    if not target.exists():
        raise VolumeError(_missing_reason(target))
    suffix = target.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix], target
    if target.is_dir():
        names = {p.name for p in target.iterdir()}
        if "zarr.json" in names or ".zarray" in names or ".zgroup" in names:
            return "zarr", target
        if "info" in names:
            return "precomputed", target
        if "attributes.json" in names:
            return "n5", target
        if slice_files(target):
            return "images", target
        raise VolumeError(
            f"{path.rstrip('/')}/: folder holds no .png/.tif images (nor a zarr, N5 or precomputed volume)"
        )
    raise VolumeError(f"{path}: unknown format {suffix or '(no extension)'!r} (supported: {SUPPORTED})")


def format_for_writing(path: Path) -> str:
    """The format ``create_volume`` writes for ``path``: by extension, a folder of slices if none."""
    suffix = path.suffix.lower()
    if not suffix:
        return "folder"
    fmt = SUFFIX_FORMATS.get(suffix)
    if fmt is None or fmt == "images":
        raise VolumeError(
            f"{path}: cannot write format {suffix!r} (use .tif, .h5, .zarr, .n5, .mrc, "
            "or a path without extension for a folder of .tif slices)"
        )
    return fmt
