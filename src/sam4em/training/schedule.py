"""The learning-rate schedule of every training loop: linear warm-up, then a cosine down to 0 over
whichever budget ends first, the step budget (``steps``) or the wall-clock budget (``max_seconds``).

A time-budgeted run sets ``steps`` to a number it never reaches, so a schedule over steps alone
would keep the rate constant; here the cosine follows ``max((step - warmup) / (steps - warmup),
seconds / max_seconds)`` and reaches its floor exactly when the first budget is spent. A run with a
step budget only gets the plain step cosine. `sam4em train` (one `StageBudget` per stage) and
`sam4em pretrain` both use these functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["StageBudget", "budget_used", "lr_factor"]


def budget_used(step: int, seconds: float, *, steps: int | None, max_seconds: float | None) -> float:
    """The share of the run's budget spent after `step` steps and `seconds` seconds (>= 1: the run is over)."""
    parts = [step / steps] if steps is not None else []
    if max_seconds is not None:
        parts.append(seconds / max_seconds)
    if not parts:
        raise ValueError("a run needs a budget: steps and/or max_seconds")
    return max(parts)


def lr_factor(step: int, seconds: float, *, warmup_steps: int, steps: int | None, max_seconds: float | None) -> float:
    """The multiple of the base learning rate for `step`, `seconds` into the run (1 at the peak, 0 at the end)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    parts = [(step - warmup_steps) / max(1, steps - warmup_steps)] if steps is not None else []
    if max_seconds is not None:
        parts.append(seconds / max_seconds)
    progress = min(1.0, max(parts, default=0.0))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class StageBudget:
    """The budgets of one training stage and the time it has run, across resumes.

    `clock` is a monotonic seconds counter (tests pass a fake one); `seconds_before` is the time the
    stage ran before an interruption, so a resumed stage keeps its schedule and its remaining time.
    """

    def __init__(
        self,
        *,
        steps: int | None,
        max_seconds: float | None,
        warmup_steps: int,
        seconds_before: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.steps, self.max_seconds, self.warmup_steps = steps, max_seconds, warmup_steps
        self._clock = clock
        self._before = seconds_before
        self._started: float | None = None

    def start(self) -> None:
        """Start the clock: the stage's time counts from here (set-up before its first step does not)."""
        self._started = self._clock()

    def elapsed(self) -> float:
        """Seconds the stage has run, including before a resume."""
        return self._before + (0.0 if self._started is None else self._clock() - self._started)

    def lr_factor(self, step: int) -> float:
        """`lr_factor` for `step` at the current time (the function a `LambdaLR` calls)."""
        return lr_factor(step, self.elapsed(), warmup_steps=self.warmup_steps, steps=self.steps, max_seconds=self.max_seconds)

    def spent(self, step: int) -> bool:
        """Either budget is spent after `step` steps, at the current time."""
        return budget_used(step, self.elapsed(), steps=self.steps, max_seconds=self.max_seconds) >= 1.0

    def out_of_time(self) -> bool:
        """The wall-clock budget is spent (never without one)."""
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds
