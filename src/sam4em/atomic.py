"""Atomic file writes: the content goes to a hidden temporary file beside the target, which is renamed
over the target only when complete, so an interruption or a crash leaves the old file or the new one,
never half of one (a resumed run must be able to trust what it finds)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["remove_leftovers", "write_atomically", "write_text_atomically"]


def _current_umask() -> int:
    try:  # Linux says it without changing it
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)", status, flags=re.M).group(1), 8)  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        mask = os.umask(0o022)  # elsewhere reading it means setting it: once, at import
        os.umask(mask)
        return mask


#: The process's umask: a file written here gets the permissions a plain ``open(path, "w")`` gives.
_UMASK = _current_umask()


def write_atomically(
    target: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = True
) -> None:
    """Call ``write(temporary path)``, then give the temporary file the name ``target``; on any error
    the temporary file is removed and ``target`` is untouched.

    Without ``overwrite`` an existing ``target`` is never replaced, even one that appears meanwhile:
    FileExistsError, naming the file and the fix.
    """
    target = Path(target)
    # Named per process and thread (not tempfile.mkstemp, whose 0600 mode the target would inherit).
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # see _LEFTOVER
    try:
        write(temporary)
        if temporary.is_file():  # some writers (safetensors) create their file 0600: others could not read it
            temporary.chmod(0o666 & ~_UMASK)
        if overwrite:
            os.replace(temporary, target)
        else:
            _link_new(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _link_new(temporary: Path, target: Path) -> None:
    """Give ``temporary`` the name ``target`` unless that exists (a hard link fails then, atomically)."""
    exists = FileExistsError(
        f"{target}: already exists (pass overwrite=True / --overwrite to replace it, or choose another name)"
    )
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise exists from None
        os.replace(temporary, target)


def write_text_atomically(target: str | os.PathLike[str], text: str) -> None:
    """``target.write_text(text)`` (UTF-8), atomically."""
    write_atomically(target, lambda path: path.write_text(text, encoding="utf-8"))


# The temporary files `write_atomically` names: hidden, with the writer's process and thread.
_LEFTOVER = re.compile(r"\..+\.\d+-\d+\.tmp")


def remove_leftovers(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that writes into `directory` left when their process was killed (SIGKILL,
    a node lost: no `finally` runs), and return them. Only for a folder that nobody else is writing now,
    such as a claimed run folder (`sam4em.claim`): another writer's temporary file looks the same."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    leftovers = [path for path in directory.iterdir() if _LEFTOVER.fullmatch(path.name) and path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
