"""Downloading the files of a public dataset: pooch with checksums, ``file://`` mirrors copied.

:func:`sam4em.datasets.get_dataset` calls :func:`fetch` for each :class:`RemoteFile` of a
dataset only when asked to download (``download=True``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


@dataclass(frozen=True)
class RemoteFile:
    """A downloadable file: its URL, its SHA-256 (``None`` where unknown) and where it goes.

    ``dest`` is relative to the data directory. ``unpack`` extracts a zip archive into the
    folder of ``dest`` (the archive itself is kept so pooch does not fetch it again).
    """

    url: str
    sha256: str | None
    dest: str
    unpack: bool = False


def _copy_file_url(
    url: str, output_file: str | Any, pooch_instance: Any, check_only: bool = False
) -> bool | None:
    """pooch downloader for ``file://`` URLs (a mirror on a shared file system, and tests)."""
    source = Path(unquote(urlparse(url).path))
    if check_only:
        return source.is_file()
    if isinstance(output_file, (str, os.PathLike)):
        shutil.copyfile(source, output_file)
    else:
        with source.open("rb") as handle:
            shutil.copyfileobj(handle, output_file)
    return None


def fetch(remote: RemoteFile, root: str | os.PathLike[str]) -> Path:
    """Download ``remote`` into ``root / remote.dest`` with pooch; return the local path.

    pooch verifies the SHA-256 when ``remote.sha256`` is known and raises ``ValueError`` on a
    mismatch (deleting the bad download). Zip archives with ``unpack=True`` are extracted next
    to ``dest``. ``file://`` URLs are copied, so a mirror on a shared disk works like a server.
    """
    import pooch  # deferred: only downloads need it

    dest = Path(root) / remote.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    known_hash = f"sha256:{remote.sha256}" if remote.sha256 else None
    processor = pooch.Unzip(extract_dir=str(dest.parent)) if remote.unpack else None
    downloader = _copy_file_url if urlparse(remote.url).scheme == "file" else None
    pooch.retrieve(
        url=remote.url,
        known_hash=known_hash,
        fname=dest.name,
        path=dest.parent,
        processor=processor,
        downloader=downloader,
    )
    return dest
