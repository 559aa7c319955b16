"""`ProcessHandles`: volumes a dataset opens once per process.

Open file handles neither pickle nor survive a fork, and a DataLoader worker gets its dataset by one or
the other; so the cache empties itself when pickled and when it finds itself in another process, and
each process reopens what it reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["ProcessHandles"]

Handle = TypeVar("Handle")


class ProcessHandles(Generic[Handle]):
    """Handles by index, opened on first use in each process."""

    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._pid = os.getpid()

    def get(self, index: int, open_: Callable[[], Handle]) -> Handle:
        """The handle of ``index`` in this process, opened with ``open_()`` the first time."""
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = open_()
        return self._handles[index]

    def __getstate__(self) -> dict[str, Any]:
        return {"_handles": {}, "_pid": self._pid}
