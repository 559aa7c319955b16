"""The CLI boundary: `segment`'s flags in the forms users type, and every foreseeable failure as one
line (exit 2 for bad input, 1 for exhausted memory) while bugs keep their traceback (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from sam4em import cli
from sam4em.cli import build_parser, main
from sam4em.errors import Sam4emError
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import RUN_RECORD
from sam4em.io import open_volume

SEGMENT = ["--model", "test-tiny", "--output-type", "labels", "--direction", "forward", "--device", "cpu"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (2, 64, 80), dtype=np.uint8), photometric="minisblack")
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sam4em: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tile", "48", "40", "--halo", "8", "4"], ((48, 40), (8, 4))),  # micro-sam / nnU-Net form
        (["--tile", "48,40", "--halo", "8"], ((48, 40), (8, 8))),
        (["--tile", "48 40", "--halo", "8 4"], ((48, 40), (8, 4))),
        (["--tile", "48"], ((48, 48), None)),
    ],
)
def test_tile_and_halo_accept_two_numbers_a_pair_or_one(argv: list[str], expected: tuple[object, object]) -> None:
    args = build_parser().parse_args(["segment", "in.tif", "out.zarr", "--model", "test-tiny", *argv])
    assert (args.tile, args.halo) == expected


@pytest.mark.parametrize("tile", [["48", "40", "32"], ["big"], ["48", "x"]])
def test_bad_tile_is_one_line_naming_the_flag(tile: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "in.tif", "out.zarr", "--model", "test-tiny", "--tile", *tile])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tile" in err[0] and "two whole numbers" in err[0], err


def test_two_number_tile_reaches_the_segmentation(tmp_path: Path, image: Path) -> None:
    output = tmp_path / "out.zarr"
    assert main(["segment", str(image), str(output), *SEGMENT, "--tile", "48", "40", "--halo", "8", "4",
                 "--no-progress"]) == 0
    with open_volume(output, "labels") as labels:
        record = json.loads(labels.attrs[RUN_RECORD])
    assert (record["tile_shape"], record["halo"]) == ([48, 40], [8, 4])


def test_no_progress_silences_the_segment_bar(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segment", str(image), str(tmp_path / "a.zarr"), *SEGMENT]) == 0
    assert "segment" in capsys.readouterr().err  # the bar is drawn by default ...
    assert main(["segment", str(image), str(tmp_path / "b.zarr"), *SEGMENT, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""  # ... and not with --no-progress


@pytest.mark.parametrize("device", ["banana", "cuda:x", "cuda:7"])
def test_unusable_device_is_one_line_before_the_model_loads(
    device: str, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine with one GPU, whether or not this one has any: cuda:7 must be refused by count.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("sam4em.models.load_model", lambda *a, **k: pytest.fail("model loaded first"))
    args = [str(image), str(tmp_path / "out.zarr"), "--model", "test-tiny", "--device", device]
    assert main(["segment", *args]) == 2
    line = _one_error_line(capsys)
    assert f"--device {device}:" in line and "cpu" in line, line
    if device == "cuda:7":
        assert "this machine has 1 GPU" in line and "cuda" in line
    assert not (tmp_path / "out.zarr").exists()


def test_library_refuses_an_unusable_device_too(tmp_path: Path, image: Path) -> None:
    from sam4em.inference.streaming import segment_to_file

    with pytest.raises(Sam4emError, match="--device banana"):
        segment_to_file(image, tmp_path / "out.zarr", "test-tiny", SegmentOptions(device="banana"))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Sam4emError("x.tif: refused; do y"), 2),
        (FileNotFoundError("x.tif: no such file"), 2),
        (MemoryError("cannot allocate 64 GiB"), 1),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), 1),
    ],
    ids=["refusal", "missing-file", "host-memory", "gpu-memory"],
)
def test_foreseeable_failures_become_one_line(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setitem(cli._COMMANDS, "models", fail)
    assert main(["models"]) == code
    line = _one_error_line(capsys)
    if code == 1:
        assert "out of memory" in line and "--batch-size" in line


@pytest.mark.parametrize("bug", [TypeError("f() got an unexpected keyword"), AttributeError("no attribute"),
                                 RuntimeError("shape mismatch"), AssertionError()])
def test_bugs_keep_their_traceback(bug: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: object) -> int:
        raise bug

    monkeypatch.setitem(cli._COMMANDS, "models", fail)
    with pytest.raises(type(bug)):
        main(["models"])
