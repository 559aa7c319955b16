"""Path handling: ``path:key`` splitting, symbolic links, and which format an existing path holds.

Everything format-specific comes from the table in :mod:`sam4em.io.formats`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

from sam4em.io.base import VolumeError
from sam4em.io.formats import FORMATS, PRECOMPUTED_SCHEME, VolumeFormat, format_for_path, suffix_of

__all__ = [
    "CONTAINER_SUFFIXES",
    "PRECOMPUTED_SCHEME",
    "SUFFIX_FORMATS",
    "detect_format",
    "parse_path_key",
    "resolve_path",
]


def _suffix_formats() -> dict[str, str]:
    return {suffix: fmt.name for fmt in FORMATS.values() for suffix in fmt.suffixes}


class _SuffixFormats(Mapping[str, str]):
    """Format names by file extension (lower case), read from ``FORMATS`` at each use."""

    def __getitem__(self, suffix: str) -> str:
        return _suffix_formats()[suffix]

    def __iter__(self) -> Iterator[str]:
        return iter(_suffix_formats())

    def __len__(self) -> int:
        return len(_suffix_formats())


class _ContainerSuffixes(Set[str]):
    """Extensions of formats that hold several arrays named by a key, read from ``FORMATS`` at each use."""

    @staticmethod
    def _current() -> frozenset[str]:
        return frozenset(s for fmt in FORMATS.values() if fmt.container for s in fmt.suffixes)

    def __contains__(self, suffix: object) -> bool:
        return suffix in self._current()

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


#: Views of the format table kept for callers that predate it: prefer ``sam4em.io.formats``.
SUFFIX_FORMATS: Mapping[str, str] = _SuffixFormats()
CONTAINER_SUFFIXES: Set[str] = _ContainerSuffixes()


def _scheme(spec: str) -> str | None:
    return next((f.scheme for f in FORMATS.values() if f.scheme and spec.startswith(f.scheme)), None)


def parse_path_key(spec: str) -> tuple[str, str | None]:
    """Split ``"vol.h5:raw"`` into ``("vol.h5", "raw")``; return ``(spec, None)`` when it holds no key.

    Splits at the last ':' only when the part before it is an existing file or folder or
    ends with a container extension (.h5, .hdf5, .hdf, .zarr, .n5), and never when the
    whole string is an existing path. So Windows drive letters (``C:\\data\\vol.tif``) and
    URLs (``precomputed://...``) are left alone, and ``C:\\data\\vol.h5:raw`` still splits.
    """
    if _scheme(spec) or Path(spec).exists():
        return spec, None
    head, sep, key = spec.rpartition(":")
    is_drive = len(head) == 1 and head.isalpha() and (not key or key[0] in "/\\")
    if not sep or not head or not key or is_drive:
        return spec, None
    if Path(head).exists() or suffix_of(head) in CONTAINER_SUFFIXES:
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
    return f"{path}: no such file or directory (check the path)"


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
    scheme = _scheme(path)
    target = Path(path[len(scheme) :] if scheme else path)
    if not target.exists():
        raise VolumeError(_missing_reason(target))
    return format_for_path(path), target
