"""Path handling: ``path:key`` splitting, symbolic links, and which format an existing path holds.

Everything format-specific comes from the table in :mod:`sam4em.io.formats`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam4em.io.base import VolumeError
from sam4em.io.formats import (
    VolumeFormat,
    format_for_path,
    format_for_suffix,
    has_scheme,
    scheme_of,
    suffix_of,
)

__all__ = ["detect_format", "has_scheme", "parse_path_key", "resolve_path"]


def parse_path_key(spec: str) -> tuple[str, str | None]:
    """Split ``"vol.h5:raw"`` into ``("vol.h5", "raw")``; return ``(spec, None)`` when it holds no key.

    Splits at the last ':' only when the part before it is an existing file or folder or
    ends with a container format's extension (.h5, .zarr, .n5, ...), and never when the
    whole string is an existing path. So Windows drive letters (``C:\\data\\vol.tif``) and
    URLs (``precomputed://...``) are left alone, and ``C:\\data\\vol.h5:raw`` still splits.
    """
    if has_scheme(spec) or Path(spec).exists():
        return spec, None
    head, sep, key = spec.rpartition(":")
    is_drive = len(head) == 1 and head.isalpha() and (not key or key[0] in "/\\")
    if not sep or not head or not key or is_drive:
        return spec, None
    fmt = format_for_suffix(suffix_of(head))
    if Path(head).exists() or (fmt is not None and fmt.container):
        return head, key
    return spec, None


def _missing_reason(path: Path) -> str:
    """Why ``path`` cannot be found: a link that loops or dangles, or no such file."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except FileNotFoundError:
            return f"{path}: is a symbolic link to a missing file ({os.readlink(path)}; fix the link or the path)"
        except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) since
            return f"{path}: is a symbolic link that loops back on itself (point the link at the real file)"
    start = "" if path.is_absolute() else f"; a relative path starts from the working directory, {Path.cwd()}"
    return f"{path}: no such file or directory (check the path{start})"


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path with symbolic links resolved; a link loop is a VolumeError, not a RuntimeError."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        raise VolumeError(_missing_reason(Path(path))) from None


def detect_format(path: str) -> tuple[VolumeFormat, Path]:
    """The format of an existing path and the path itself, its scheme (``precomputed://``) stripped.

    Files go by extension; folders by extension (.zarr, .n5), else by what they hold.
    """
    scheme = scheme_of(path)
    target = Path(path[len(scheme) :] if scheme else path)
    if not target.exists():
        raise VolumeError(_missing_reason(target))
    return format_for_path(path), target
