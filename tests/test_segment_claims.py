"""One writer per output (`sam4em.claim`): a second live `segment` on the same output is refused in one
line, whatever its options; the claim of a dead run never blocks its `--resume`.

Before the claim, two `--overwrite` runs on one output shared one hidden partial folder: the second
deleted and refilled the first's blocks, and the result mixed both runs (issue 11, item 2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sam4em.claim import OutputClaimed, claim_file, claim_output
from sam4em.cli import main
from sam4em.inference.distributed import segment_to_file_dask
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import BLOCKS_DONE, COMPLETE, Interrupted, segment_to_file
from sam4em.io import open_volume

OPTIONS = {"output_type": "probs", "direction": "forward", "block_size": 2, "device": "cpu"}
CLI_OPTIONS = ["--model", "test-tiny", "--output-type", "probs", "--direction", "forward", "--block-size", "2",
               "--device", "cpu", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (6, 64, 64), dtype=np.uint8), photometric="minisblack")
    return path


def _probs(path: Path) -> np.ndarray:
    with open_volume(path, "class1") as volume:
        assert volume.attrs[COMPLETE] is True
        return volume[:]


def test_second_overwrite_run_while_one_writes_is_refused_and_first_run_unmixed(
    tmp_path: Path, image: Path
) -> None:
    output = tmp_path / "out.zarr"
    segment_to_file(image, output, "test-tiny", SegmentOptions(**OPTIONS))  # an existing output, so both pass --overwrite
    refusals: list[str] = []

    def second_run_between_blocks() -> bool:
        # Called by the first run before each of its blocks, i.e. while it holds its partial output.
        with pytest.raises(OutputClaimed) as refused:
            segment_to_file(
                image,
                output,
                "test-tiny",
                SegmentOptions(overwrite=True, **{**OPTIONS, "output_type": "labels"}),
            )
        refusals.append(str(refused.value))
        return False

    segment_to_file(
        image,
        output,
        "test-tiny",
        SegmentOptions(overwrite=True, **OPTIONS),
        stop=second_run_between_blocks,
    )
    assert len(refusals) == 3  # one per block of the first run
    assert str(output) in refusals[0] and "another sam4em run is writing it" in refusals[0]
    assert "\n" not in refusals[0]
    segment_to_file(image, tmp_path / "reference.zarr", "test-tiny", SegmentOptions(**OPTIONS))
    np.testing.assert_array_equal(_probs(output), _probs(tmp_path / "reference.zarr"))
    assert not list(tmp_path.glob(".*")), "claim file or partial left behind"


def test_cli_second_writer_gets_one_line_naming_the_holder(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with claim_output(output):  # a live writer: the claim every segment run takes
        code = main(["segment", str(image), str(output), *CLI_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sam4em: error: ")
    assert str(output) in err[0] and "pid " in err[0] and "--resume" in err[0]
    assert not output.exists()


def test_dask_run_on_a_claimed_output_is_refused_before_any_worker_starts(tmp_path: Path, image: Path) -> None:
    output = tmp_path / "out.zarr"
    with claim_output(output), pytest.raises(OutputClaimed, match="another sam4em run"):
        # workers=0 would be refused when the cluster starts: the claim must refuse first.
        segment_to_file_dask(image, output, "test-tiny", SegmentOptions(**OPTIONS), workers=0)


def test_claim_of_a_killed_run_does_not_block_its_resume(tmp_path: Path, image: Path) -> None:
    output = tmp_path / "out.zarr"
    calls = iter([False, True])  # one block, then stop: a partial output
    with pytest.raises(Interrupted):
        segment_to_file(image, output, "test-tiny", SegmentOptions(**OPTIONS), stop=lambda: next(calls))
    # A process that holds the claim (as a running segment does) and is then killed without cleanup.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom sam4em.claim import claim_output\n"
         "with claim_output(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
         str(output)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputClaimed, match=f"pid {holder.pid} "):
            segment_to_file(image, output, "test-tiny", SegmentOptions(resume=True, **OPTIONS))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert claim_file(output).exists()  # a dead run's claim file stays behind ...
    segment_to_file(image, output, "test-tiny", SegmentOptions(resume=True, **OPTIONS))  # ... and blocks nothing
    with open_volume(output, "class1") as done:
        assert list(done.attrs[BLOCKS_DONE]) == [0, 1, 2]
    segment_to_file(image, tmp_path / "reference.zarr", "test-tiny", SegmentOptions(**OPTIONS))
    np.testing.assert_array_equal(_probs(output), _probs(tmp_path / "reference.zarr"))
    assert not claim_file(output).exists()


def test_output_under_a_regular_file_is_refused_in_one_line(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out.tif").write_bytes(b"not a folder")
    code = main(["segment", str(image), str(tmp_path / "out.tif" / "x.zarr"), *CLI_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "out.tif is a file, not a folder" in err[0], err
    assert (tmp_path / "out.tif").read_bytes() == b"not a folder"


def test_output_in_a_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder (or file system): one line naming it, before the model loads, not an OSError about
    the claim file. Permission bits do not bind root, who runs these tests, so the check itself is mocked."""
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("sam4em.claim.os.access", lambda path, mode: Path(path) != locked)
    code = main(["segment", str(image), str(locked / "out.zarr"), *CLI_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"cannot write into {locked}" in err[0], err
    assert list(locked.iterdir()) == []


def test_same_output_through_a_symlinked_folder_is_one_claim(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with (
        claim_output(tmp_path / "real" / "out.zarr"),
        pytest.raises(OutputClaimed),
        claim_output(tmp_path / "link" / "out.zarr"),
    ):
        pass
    with claim_output(tmp_path / "link" / "out.zarr"):  # released: free again
        pass
