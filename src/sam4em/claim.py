"""One writer per output: `claim_output` refuses a second run on an output some live run is writing.

A run that creates, fills, resumes or replaces an output holds its claim for the whole run (partial
sibling and final swap included): an exclusive OS lock (``filelock``: ``flock`` on Unix, which works
across hosts on NFSv4 and Lustre) on the hidden file ``.<name>.sam4em-claim`` beside the output. The
holder writes its owner record (pid, host, start time, a random token) into that file, so a refused
run can say who holds the output. A second claim of the same output, from any process or host with
any options, fails at once with `OutputClaimed`.

Stale claims: the OS drops a lock when its process ends, however it ends (killed, crashed, machine
restarted), so the claim of a dead run never blocks anyone: the next run on the output (typically a
``--resume``) takes it over. The claim file is removed when the claim is released; one left behind by
a dead run is reused. Only a live holder's lock counts, never the file's existence or its record.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from sam4em.errors import Sam4emError

__all__ = ["OutputClaimed", "claim_file", "claim_output", "refuse_file_parent"]


class OutputClaimed(Sam4emError):
    """Another live run holds the claim of this output."""


def claim_file(output: str | os.PathLike[str]) -> Path:
    """The hidden lock file of `output` (a file or a folder such as a .zarr store).

    Its folder is resolved, so one output reached through a symlinked folder has one claim file.
    """
    path = Path(output)
    return path.parent.resolve() / f".{path.name}.sam4em-claim"


def refuse_file_parent(output: str | os.PathLike[str]) -> None:
    """Refuse an output whose nearest existing parent is a file (``out.tif/x.zarr``) or a folder this process
    cannot write: it cannot be made."""
    output = Path(output).absolute()
    blocker = next(p for p in output.parents if p.exists())
    if not blocker.is_dir():
        raise Sam4emError(f"{output}: {blocker} is a file, not a folder; write the output into a folder")
    # Checked before any work: the claim file, a partial sibling and the output itself are made there.
    if not os.access(blocker, os.W_OK | os.X_OK):
        raise Sam4emError(f"{output}: cannot write into {blocker} (no permission, or a read-only file system); "
                          "choose an output folder you can write")


def _holder(path: Path) -> str:
    """'pid N on HOST since TIME' from the claim file, or a plain phrase when it cannot be read."""
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']} since {owner['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that is still starting"  # the record is written right after the lock is taken


@contextmanager
def claim_output(output: str | os.PathLike[str]) -> Iterator[str]:
    """Hold the claim of `output` for the ``with`` block; yields the owner token.

    Raises:
        OutputClaimed: another live run holds it (one line naming the holder and the fix).
        Sam4emError: the output's folder cannot be made (a parent is a file).
    """
    output = Path(output)
    refuse_file_parent(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    path = claim_file(output)
    token = uuid.uuid4().hex
    record = {
        "token": token,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    def write_record(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)

    # timeout=0: refuse at once instead of queueing behind a run that may take hours.
    lock = FileLock(path, timeout=0, on_acquired=write_record)
    try:
        lock.acquire()
    except Timeout:
        raise OutputClaimed(
            f"{output}: another sam4em run is writing it ({_holder(path)}); wait for it to end or stop "
            "it, then rerun (with --resume to keep its finished blocks), or write to another output"
        ) from None
    try:
        yield token
    finally:
        # Unlinked while still locked: a run that opened the old file meanwhile sees it unlinked
        # once it gets the lock and retries on a fresh file (filelock checks the link count).
        path.unlink(missing_ok=True)
        lock.release()
