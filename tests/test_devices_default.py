"""Default device choice (issue 14): CUDA when this machine has a usable GPU, else the CPU, and
`sam4em segment` says which. CUDA is mocked, so these run on any machine and stop before CUDA work."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch

from sam4em.cli import main
from sam4em.devices import default_device, describe_device, device_for
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import segment_to_file  # before any test patches `sam4em.models.load_model`
from sam4em.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int, *, available: bool | None = None) -> None:
    """Pretend this machine has `count` GPUs (``torch.cuda.is_available`` follows unless `available`)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0 if available is None else available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    properties = SimpleNamespace(name="Fake GPU", total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8),
                     photometric="minisblack")
    return path


@pytest.mark.parametrize(
    ("count", "available", "expected"),
    [(0, None, "cpu"), (1, None, "cuda"), (4, None, "cuda"), (2, False, "cpu"), (0, True, "cpu")],
    ids=["no-gpu", "one-gpu", "four-gpus", "driver-unusable", "no-visible-gpu"],
)
def test_default_device_is_cuda_only_when_a_gpu_is_usable(
    count: int, available: bool | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpus(monkeypatch, count, available=available)
    assert default_device() == torch.device(expected)


def test_a_model_on_the_cpu_goes_to_the_default_device(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("test-tiny", num_classes=1, pretrained=False)  # loaded models start on the CPU
    _gpus(monkeypatch, 1)
    assert device_for(model) == torch.device("cuda")
    _gpus(monkeypatch, 0)
    assert device_for(model) == torch.device("cpu")


def test_descriptions_name_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    assert describe_device("cuda") == "cuda (Fake GPU, 80 GiB)"
    assert describe_device(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


class _LoadedOn(Exception):
    """Raised by the stand-in for `load_model`: the run stops there, before any CUDA work."""


def test_segment_without_device_loads_the_model_on_cuda_when_present(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _gpus(monkeypatch, 1)

    def load_model(source: str, *, device: str | None = None) -> None:
        raise _LoadedOn(device)

    monkeypatch.setattr("sam4em.inference.run.load_model", load_model)
    with pytest.raises(_LoadedOn) as loaded:
        main(["segment", str(image), str(tmp_path / "out.zarr"), "--model", "test-tiny", "--direction", "forward"])
    assert loaded.value.args == ("cuda",)
    assert capsys.readouterr().err == ""  # the device is named once the run starts, not before a refusal


def test_segment_without_device_runs_on_the_cpu_without_a_gpu_and_says_so(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _gpus(monkeypatch, 0)
    assert main(["segment", str(image), str(tmp_path / "out.zarr"), "--model", "test-tiny",
                 "--direction", "forward", "--output-type", "labels"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"sam4em: segmenting on cpu ({torch.get_num_threads()} threads), one z-block at a time", err
    # An explicit --device is used as given, and named too.
    assert main(["segment", str(image), str(tmp_path / "b.zarr"), "--model", "test-tiny", "--device", "cpu",
                 "--direction", "forward", "--output-type", "labels"]) == 0
    assert capsys.readouterr().err.splitlines()[0].startswith("sam4em: segmenting on cpu (")


def test_library_default_is_logged_not_printed(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _gpus(monkeypatch, 0)
    with caplog.at_level(logging.INFO, logger="sam4em.inference.streaming"):
        segment_to_file(
            image,
            tmp_path / "out.zarr",
            "test-tiny",
            SegmentOptions(output_type="labels", direction="forward"),
        )
    assert [r.getMessage() for r in caplog.records] == [
        f"segmenting on cpu ({torch.get_num_threads()} threads), one z-block at a time"
    ]
    assert capsys.readouterr().err == ""
