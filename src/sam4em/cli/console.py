"""What the commands share on the terminal: exit statuses, Ctrl-C/SIGTERM, library messages, progress bars."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

Progress = Callable[[int, int], None]


@contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `event`; the library flushes finished blocks and raises `Interrupted`."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: event.set())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def library_messages(*, enabled: bool) -> Iterator[None]:
    """The library's INFO messages (the device a segmentation runs on) as ``sam4em: ...`` lines on stderr."""
    if not enabled:
        yield
        return
    logger, handler = logging.getLogger("sam4em"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sam4em: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def progress_bar(description: str) -> Progress:
    from tqdm.auto import tqdm

    bar: tqdm[Any] | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
