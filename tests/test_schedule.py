"""The learning-rate schedule (issue 14): warm-up, then a cosine to 0 over whichever budget ends first;
a time-budgeted stage decays by the elapsed share of `max_seconds`. Time comes from fake clocks."""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sam4em.training import stage, trainer
from sam4em.training.config import config_from_dict
from sam4em.training.schedule import StageBudget, budget_used, lr_factor

HUGE = 10**9  # the step budget of a time-budgeted stage: never reached


def _fake_clock(tick: float) -> Callable[[], float]:
    """A clock that advances `tick` seconds every time it is read."""
    now = [1000.0]

    def clock() -> float:
        now[0] += tick
        return now[0]

    return clock


def test_time_budget_decays_to_the_floor_at_max_seconds() -> None:
    factors = [lr_factor(10, s, warmup_steps=5, steps=HUGE, max_seconds=60) for s in np.linspace(0, 60, 13)]
    assert factors[0] == pytest.approx(1.0, abs=1e-6)
    assert factors[6] == pytest.approx(0.5, abs=1e-6)  # half the time: half the rate
    assert factors[-1] == 0.0
    assert (np.diff(factors) < 0).all()
    assert lr_factor(10, 90, warmup_steps=5, steps=HUGE, max_seconds=60) == 0.0  # stays at the floor


def test_whichever_budget_ends_first_drives_the_cosine() -> None:
    # 10 s budget, 100 steps: at step 50 after 9 s the time (90 %) is ahead of the steps (50 %).
    assert lr_factor(50, 9, warmup_steps=0, steps=100, max_seconds=10) == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
    # ... at step 90 after 1 s the steps are.
    assert lr_factor(90, 1, warmup_steps=0, steps=100, max_seconds=10) == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
    assert budget_used(50, 9, steps=100, max_seconds=10) == pytest.approx(0.9)
    assert budget_used(100, 0, steps=100, max_seconds=None) == 1.0
    with pytest.raises(ValueError, match="budget"):
        budget_used(1, 1.0, steps=None, max_seconds=None)


def test_step_budget_alone_is_the_plain_warmup_cosine() -> None:
    # Warm-up rises linearly to the base rate, then the cosine runs over the steps after it.
    assert [lr_factor(s, 1e6, warmup_steps=4, steps=24, max_seconds=None) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(14, 1e6, warmup_steps=4, steps=24, max_seconds=None) == pytest.approx(0.5)
    assert lr_factor(24, 0, warmup_steps=4, steps=24, max_seconds=None) == 0.0


def test_stage_budget_counts_from_start_and_carries_time_across_a_resume() -> None:
    clock = _fake_clock(1.0)
    budget = StageBudget(steps=HUGE, max_seconds=10, warmup_steps=0, seconds_before=4.0, clock=clock)
    assert budget.elapsed() == 4.0  # set-up before start() does not count
    budget.start()  # clock reads t
    assert budget.elapsed() == 5.0  # t + 1
    assert not budget.out_of_time()  # 6 s
    assert budget.lr_factor(3) == pytest.approx(0.5 * (1 + math.cos(0.7 * math.pi)))  # 7 s of 10
    for _ in range(2):
        budget.elapsed()  # 8, 9 s
    assert budget.out_of_time()  # 10 s: spent
    assert budget.lr_factor(3) == 0.0


def _volume(path: Path) -> tuple[Path, Path]:
    """Eight 64x64 slices: dark discs (label 255) on noisy gray."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 30) ** 2 + (xx - 34) ** 2 < 10**2)[None].repeat(8, 0)
    image = np.clip(150 + rng.normal(0, 12, mask.shape) - 90 * mask, 0, 255).astype(np.uint8)
    tifffile.imwrite(path / "image.tif", image)
    tifffile.imwrite(path / "labels.tif", (255 * mask).astype(np.uint8))
    return path / "image.tif", path / "labels.tif"


@pytest.mark.usefixtures("one_thread")
def test_time_budgeted_stage_ends_with_the_rate_at_its_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, labels = _volume(tmp_path)
    config = config_from_dict({
        "classes": "mito=255",
        "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.25}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": HUGE, "max_seconds": 4.0, "batch_size": 1, "lr": 1e-3, "warmup_steps": 0},
        "val_every": 1000, "val_samples": 1, "checkpoint_every": 1000, "tensorboard": False, "augment": False,
        "device": "cpu",
    })
    # Every read of the stage's clock is a quarter second later: the stage runs out of time after a few steps.
    monkeypatch.setattr(stage, "StageBudget", functools.partial(StageBudget, clock=_fake_clock(0.25)))
    result = trainer.train(config, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["lr"]) for r in rows]
    assert 3 <= result.steps[1] == len(rows) < 20
    assert float(rows[-1]["seconds"]) >= 4.0
    assert 0 < rates[0] < 1e-3 and rates[-1] == 0.0  # decayed by the clock, to the floor at max_seconds
    assert (np.diff(rates) < 0).all()


def test_a_budget_is_spent_when_either_part_is():
    """`spent` is what `sam4em pretrain` loops on: steps, seconds (resumed ones included), or both."""
    now = [0.0]
    by_time = StageBudget(steps=None, max_seconds=10.0, warmup_steps=0, seconds_before=4.0, clock=lambda: now[0])
    by_time.start()
    now[0] = 5.9
    assert not by_time.spent(10**9)
    now[0] = 6.0
    assert by_time.spent(0)
    both = StageBudget(steps=3, max_seconds=100.0, warmup_steps=0, clock=lambda: 0.0)
    both.start()
    assert not both.spent(2) and both.spent(3)
