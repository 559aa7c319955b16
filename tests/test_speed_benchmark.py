"""The speed profile's per-part timing (issue 14): every part it names is a module SAM4EM runs, and
a part running inside another is counted once. No timings are asserted (those go in docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch

from sam4em.models import build_model
from sam4em.workflows.speed_benchmark import LAYOUTS, PARTS, part_times, speed_cases

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_part_is_timed_and_nothing_twice() -> None:
    found = set()
    for options, _ in LAYOUTS.values():
        model = build_model("test-tiny", 3, pretrained=False, **options).eval()
        found |= {name for name, _ in model.named_modules()}
        images = torch.rand(2, 1, model.image_size, model.image_size)
        parts = part_times(model, images, repeats=1)
        assert set(parts) == {*PARTS, "other"}
        assert all(parts[label] > 0 for label in PARTS), (options, parts)
        # Hooked modules inside hooked modules (the decoders' convolutions) count once: the parts add up
        # to no more than the whole pass ("other", the rest, is not negative).
        assert parts["other"] >= 0
    # A renamed module would silently time as 0 ms: every path is a module of some layout.
    assert {path for paths in PARTS.values() for path in paths} <= found


def test_cases_follow_the_device() -> None:
    assert [c.label for c in speed_cases("cpu")] == [
        "cpu-small (per class)", "cpu-small (shared memory, joint detail)", "cpu-small (shared memory, joint detail and decoders)"
    ]
    assert [c.label for c in speed_cases("cuda")] == [
        "sam2.1-hiera-tiny (per class)", "sam2.1-hiera-tiny (shared memory, joint detail)",
        "sam2.1-hiera-tiny (shared memory, joint detail and decoders)", "sam2.1-hiera-base-plus (per class)",
    ]
    assert all(c.device == "cuda:1" for c in speed_cases("cuda:1"))


def test_end_to_end_rate_and_time_in_the_model(tmp_path) -> None:
    """`segment_to_file` end to end: the share of its wall time inside the model is a fraction."""
    from sam4em.workflows.speed_benchmark import SpeedCase, stream_rate

    model = build_model("test-tiny", 3, pretrained=False).eval()
    case = SpeedCase("test-tiny", "cpu", window=model.image_size, slice_size=80, slices=3, block_size=2,
                     batch_size=4, train_seconds=1.0, repeats=1)  # fmt: skip
    rate = stream_rate(model, case, tmp_path)
    assert rate["slices_per_s"] > 0 and rate["streams"] == 1
    assert 0 < rate["efficiency"] < 1


def test_gpu_busy_samples_nvml_on_cuda_only(monkeypatch) -> None:
    """On CUDA the training phase samples NVML's utilisation in the background (mocked: no GPU here);
    elsewhere, or where NVML refuses, nothing is sampled and the report shows no figure."""
    import time

    from sam4em.workflows.speed_benchmark import gpu_busy, speed_table

    readings = iter([40, 80, 90] + [90] * 1000)
    asked: list[str] = []

    def utilization(device: str) -> int:
        asked.append(device)
        return next(readings)

    monkeypatch.setattr(torch.cuda, "utilization", utilization)
    samples: list[float] = []
    with gpu_busy("cuda:1", samples, every=0.01):
        time.sleep(0.2)
    assert len(samples) >= 3 and samples[:3] == [40.0, 80.0, 90.0] and set(asked) == {"cuda:1"}
    on_cpu: list[float] = []
    with gpu_busy("cpu", on_cpu, every=0.01):
        time.sleep(0.05)
    assert on_cpu == []

    def no_nvml(device: str) -> int:
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    refused: list[float] = []
    with gpu_busy("cuda", refused, every=0.01):
        time.sleep(0.05)
    assert refused == []
    row = {"label": "m", "device": "cuda", "window": 512, "slice_size": 1024, "tiles_per_slice": 9, "streams": 6,
           "slices_per_s": 1.0, "windows_per_s": 1.0, "efficiency": 0.9, "encoder_ms": 1.0, "full_ms": 2.0, "ratio": 2.0,
           "segment_peak_mib": 1.0, "train_steps_per_s": 1.0, "train_batch": 4, "train_data_wait": 0.1,
           "train_peak_mib": 1.0, "parts_ms": {label: 1.0 for label in [*PARTS, "other"]}}
    assert "| 10% | 73%, 90% | 1 |" in speed_table([{**row, "train_gpu_busy": 0.73, "train_gpu_busy_median": 0.9}], "machine")
    assert "| 10% | - | 1 |" in speed_table([{**row, "train_gpu_busy": None, "train_gpu_busy_median": None}], "machine")
