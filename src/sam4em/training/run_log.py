"""What every training loop (`sam4em train`, `sam4em pretrain`) shares around its steps: stopping at a
step boundary on SIGINT/SIGTERM (`Interrupt`) and the per-step metrics file (`MetricsLog`)."""

from __future__ import annotations

import csv
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from sam4em.atomic import write_atomically

__all__ = ["Interrupt", "MetricsLog"]


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops.

    `should_stop(stage, step)` requests the same from code (a GUI's stop button, a scheduler's time limit).
    """

    def __init__(self, should_stop: Callable[[int, int], bool] | None = None) -> None:
        self._requested = False
        self.should_stop = should_stop

    def requested(self, stage: int, step: int) -> bool:
        return self._requested or (self.should_stop is not None and self.should_stop(stage, step))

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The signal handlers, while inside (only on the main thread: others cannot install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True


class MetricsLog:
    """RUN_DIR/metrics.csv (one row per step) and optional TensorBoard; writes nothing unless `enabled`
    (rank 0 of a data-parallel run)."""

    def __init__(self, run_dir: Path, class_names: Sequence[str], *, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.columns = [
            "stage",
            "step",
            "loss",
            "loss_stage1",
            "loss_stage2",
            "lr",
            "seconds",
            "steps_per_s",
            "data_wait",
            *[f"val_dice_{n}" for n in class_names],
            "val_dice_mean",
        ]
        self.enabled = enabled
        self.writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, stage: int, step: int) -> None:
        """On resume: forget rows logged after the checkpoint, which will be redone."""
        if not self.enabled or not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if (int(r["stage"]), int(r["step"])) <= (stage, step)]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        def write(path: Path) -> None:
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(self.path, write)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.path.exists():
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)
        if self.writer is not None:
            global_step = row["stage"] * 1_000_000 + row["step"]
            for key, value in row.items():
                if key not in ("stage", "step") and value not in ("", None):
                    self.writer.add_scalar(f"stage{row['stage']}/{key}", float(value), global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
