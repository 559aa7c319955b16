"""The training feed (issue 14): loader processes chosen by the device when the config leaves
``num_workers`` unset, the same numbers whatever the count, and steps/s and data-wait in metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from sam4em.training import feed, stage, trainer
from sam4em.training.config import ConfigError, config_from_dict


@pytest.mark.parametrize(
    ("device", "cpus", "processes", "expected"),
    [
        ("cuda", 16, 1, 8), ("cuda", 4, 1, 3), ("cuda", 1, 1, 0), ("cuda", 16, 2, 7),
        ("cpu", 2, 1, 0), ("cpu", 1, 1, 0), ("cpu", 8, 1, 2), ("cpu", 64, 1, 4),
    ],
)
def test_default_workers_by_device_and_cores(device: str, cpus: int, processes: int, expected: int) -> None:
    assert feed.default_workers(torch.device(device), cpus=cpus, processes=processes) == expected


def test_torchrun_processes_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert feed.default_workers(torch.device("cuda"), cpus=32) == 7


def test_loader_options_on_cuda_pin_prefetch_and_keep_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "_usable_cpus", lambda: 12)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert feed.loader_options(None, torch.device("cuda")) == {
        "num_workers": 8, "pin_memory": True, "persistent_workers": True, "prefetch_factor": feed.PREFETCH,
    }
    # A value the config gives wins; without workers there is nothing to keep alive or prefetch.
    assert feed.loader_options(0, torch.device("cuda")) == {"num_workers": 0, "pin_memory": True}
    assert feed.loader_options(2, torch.device("cpu"))["num_workers"] == 2
    monkeypatch.setattr(feed, "_usable_cpus", lambda: 2)
    assert feed.loader_options(None, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}


def _data(path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 30) ** 2 + (xx - 34) ** 2 < 10**2)[None].repeat(8, 0)
    tifffile.imwrite(path / "image.tif", np.clip(150 + rng.normal(0, 12, mask.shape) - 90 * mask, 0, 255).astype(np.uint8))
    tifffile.imwrite(path / "labels.tif", (255 * mask).astype(np.uint8))
    return {
        "classes": "mito=255",
        "volumes": [{"image": str(path / "image.tif"), "labels": str(path / "labels.tif"), "val_fraction": 0.25}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1},
        "val_every": 100, "val_samples": 1, "checkpoint_every": 100, "tensorboard": False, "device": "cpu",
    }


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_config_leaves_workers_to_the_device_and_refuses_negative(tmp_path: Path) -> None:
    data = _data(tmp_path)
    assert config_from_dict(data).num_workers is None
    with pytest.raises(ConfigError, match="num_workers"):
        config_from_dict({**data, "num_workers": -1})


@pytest.mark.usefixtures("one_thread")
def test_workers_change_no_number_and_metrics_report_the_feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    asked: list[tuple[Any, torch.device]] = []

    def spy(num_workers: int | None, device: torch.device) -> dict[str, Any]:
        asked.append((num_workers, device))
        return feed.loader_options(num_workers, device)

    monkeypatch.setattr(stage, "loader_options", spy)
    trainer.train(config_from_dict(data), tmp_path / "default", progress=False)
    trainer.train(config_from_dict({**data, "num_workers": 1}), tmp_path / "one-worker", progress=False)
    assert asked == [(None, torch.device("cpu")), (1, torch.device("cpu"))]

    default, worker = _rows(tmp_path / "default"), _rows(tmp_path / "one-worker")
    assert [r["loss"] for r in default] == [r["loss"] for r in worker]  # samples are functions of the index
    for row in default + worker:
        assert float(row["steps_per_s"]) > 0
        assert 0 <= float(row["data_wait"]) <= 1
