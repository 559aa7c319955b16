"""A dock widget that runs one job in a worker thread: Run and Cancel buttons, a progress bar, a status line.

The job runs off the Qt thread (napari's ``create_worker``), so the viewer stays responsive. It
reports progress by calling :meth:`JobWidget.report` from its thread; a timer on the Qt thread
shows the latest value. Cancel sets :attr:`JobWidget.stop` (a ``threading.Event``), which the
library functions check between blocks or steps and then stop cleanly (resumable).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, create_widget
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

__all__ = ["Cancelled", "JobWidget", "devices", "layer_choice", "one_line", "pair_or_auto"]


def devices() -> list[str]:
    """Devices to offer: the CPU and each CUDA device (the first GPU is the default when present)."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [*gpus, "cpu"]


def layer_choice(annotation: Any, label: str, options: dict[str, Any] | None = None) -> ComboBox:
    """A drop-down of the viewer's layers of one type (``napari.layers.Labels``, ``Image | None`` ...);
    napari fills its choices and refreshes them when layers change."""
    widget = create_widget(annotation=annotation, label=label, options=options)
    if not isinstance(widget, ComboBox):
        raise TypeError(f"{label}: napari made a {type(widget).__name__} for {annotation}, not a drop-down of layers")
    return widget


def one_line(error: BaseException) -> str:
    return " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args else error).split())


def pair_or_auto(text: str, what: str) -> tuple[int, int] | None:
    """``"auto"``/empty -> None; ``"256"`` -> (256, 256); ``"256 384"`` -> (256, 384)."""
    if text.strip().lower() in ("", "auto"):
        return None
    try:
        parts = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 0:
        raise ValueError(f"{what}: expected 'auto', one number or 'Y X', got {text!r}")
    return (parts[0], parts[-1])


@dataclass(frozen=True)
class Cancelled:
    """What a job returns when Cancel stopped it (not an error: its finished part is kept)."""

    message: str


def _cancellable(job: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        from sam4em.inference.streaming import Interrupted

        try:
            return job()
        except Interrupted as stopped:
            return Cancelled(one_line(stopped))

    return run


class JobWidget(Container):
    """Base of the sam4em widgets; subclasses add their fields, then call :meth:`add_job_controls`,
    and implement :meth:`prepare` (Qt thread: read the fields, return the job) and :meth:`on_result`."""

    def __init__(self, viewer: Any, run_text: str) -> None:
        super().__init__()
        self.viewer = viewer
        self.stop = threading.Event()
        self.worker: Any = None
        self._progress = (0, 0)
        self._run = PushButton(text=run_text)
        self._cancel = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self._run.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)

    def add_job_controls(self) -> None:
        self.extend([self._run, self._cancel, self.bar, self.status])

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def prepare(self) -> Callable[[], Any]:
        raise NotImplementedError

    def on_result(self, result: Any) -> None:
        raise NotImplementedError

    def on_poll(self) -> None:
        """Called with each progress update on the Qt thread (e.g. to show live validation scores)."""

    def report(self, done: int, total: int) -> None:
        """Progress from the job's thread; shown by the timer on the Qt thread."""
        self._progress = (int(done), int(total))

    def start(self) -> None:
        if self.busy:
            return
        try:
            job = self.prepare()
        except (ValueError, OSError, KeyError) as error:
            self.status.value = f"error: {one_line(error)}"
            return
        self.stop.clear()
        self._progress = (0, 0)
        self.bar.value = 0
        self.status.value = "running..."
        connect = {"returned": self._returned, "errored": self._errored, "finished": self._finished}
        self.worker = create_worker(_cancellable(job), _start_thread=False, _connect=connect)
        self._run.enabled, self._cancel.enabled = False, True
        self._timer.start()
        self.worker.start()

    def cancel(self) -> None:
        if self.busy:
            self.stop.set()
            self.status.value = "stopping at the next block/step..."

    def _poll(self) -> None:
        done, total = self._progress
        if total > 0:
            self.bar.max = total
            self.bar.value = min(done, total)
        self.on_poll()

    def _returned(self, result: Any) -> None:
        self._poll()
        if isinstance(result, Cancelled):
            self.status.value = f"cancelled: {result.message}"
        else:
            self.on_result(result)

    def _errored(self, error: BaseException) -> None:
        self.status.value = f"error: {type(error).__name__}: {one_line(error)}"

    def _finished(self) -> None:
        self._timer.stop()
        self.worker = None
        self._run.enabled, self._cancel.enabled = True, False
