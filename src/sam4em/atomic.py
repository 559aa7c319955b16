"""Atomic file writes: the content goes to a hidden temporary file beside the target, which is renamed
over the target only when complete, so an interruption or a crash leaves the old file or the new one,
never half of one (a resumed run must be able to trust what it finds)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_text_atomically"]


def write_atomically(target: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(temporary path)``, then rename the temporary file to ``target``; on any error the
    temporary file is removed and ``target`` is untouched."""
    target = Path(target)
    # Named per process and thread (not tempfile.mkstemp, whose 0600 mode the target would inherit).
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: str | os.PathLike[str], text: str) -> None:
    """``target.write_text(text)`` (UTF-8), atomically."""
    write_atomically(target, lambda path: path.write_text(text, encoding="utf-8"))
