"""`segment --resume` checks the run's fingerprint: the model's weights (by digest, not by path) and
every option that changes the result. A partial output started by another run is refused in one
line, never finished with blocks of a second model (issue 11, item 3).

Before, the record held the run folder's path only: retraining the folder in place and resuming gave
a volume whose blocks came from two models, marked complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from sam4em.cli import main
from sam4em.inference.distributed import _cached_model
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import COMPLETE, Interrupted, segment_to_file
from sam4em.io import VolumeError, open_volume
from sam4em.models import build_model, save_model

CLI_OPTIONS = ["--output-type", "probs", "--direction", "forward", "--block-size", "2", "--device", "cpu",
               "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (6, 64, 64), dtype=np.uint8), photometric="minisblack")
    return path


def _save_run(folder: Path, *, perturbed: bool) -> None:
    """A test-tiny run folder; `perturbed` changes one weight, as retraining in place would."""
    model = build_model("test-tiny", pretrained=False)
    if perturbed:
        with torch.no_grad():
            next(p for p in model.parameters() if p.requires_grad).add_(0.5)
    save_model(model, folder)


def _interrupted_after_one_block(image: Path, output: Path, run: Path) -> None:
    calls = iter([False, True])
    with pytest.raises(Interrupted):
        segment_to_file(
            image,
            output,
            run,
            SegmentOptions(output_type="probs", direction="forward", block_size=2),
            stop=lambda: next(calls),
        )


def test_resume_with_the_run_folder_retrained_in_place_is_refused_naming_the_weights(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, output = tmp_path / "run", tmp_path / "out.zarr"
    _save_run(run, perturbed=False)
    _interrupted_after_one_block(image, output, run)
    _save_run(run, perturbed=True)  # same path, other weights

    code = main(["segment", str(image), str(output), "--model", str(run), "--resume", *CLI_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and str(output) in err[0] and "model weights" in err[0], err
    assert "mix" in err[0] and "--overwrite without --resume" in err[0]
    with open_volume(output, "class1") as partial:
        assert partial.attrs[COMPLETE] is False  # left as it was, not finished with the other model

    # With the model it was started with, the resume finishes and equals an uninterrupted run.
    _save_run(run, perturbed=False)
    assert main(["segment", str(image), str(output), "--model", str(run), "--resume", *CLI_OPTIONS]) == 0
    assert main(["segment", str(image), str(tmp_path / "ref.zarr"), "--model", str(run), *CLI_OPTIONS]) == 0
    with open_volume(output, "class1") as done, open_volume(tmp_path / "ref.zarr", "class1") as reference:
        assert done.attrs[COMPLETE] is True
        np.testing.assert_array_equal(done[:], reference[:])


@pytest.mark.parametrize("change", ["z-flipped", "one slice fewer"])
def test_resume_with_the_input_replaced_in_place_is_refused_naming_its_content(
    tmp_path: Path, image: Path, change: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stack re-aligned (same shape, same intensity range) or re-cropped at the same path is another
    input: finishing the output with it would mix two volumes' blocks, or leave slices never written."""
    run, output = tmp_path / "run", tmp_path / "out.zarr"
    _save_run(run, perturbed=False)
    _interrupted_after_one_block(image, output, run)
    stack = tifffile.imread(image)
    tifffile.imwrite(image, stack[::-1] if change == "z-flipped" else stack[:-1], photometric="minisblack")

    code = main(["segment", str(image), str(output), "--model", str(run), "--resume", *CLI_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "different input content" in err[0], err
    with open_volume(output, "class1") as partial:
        assert partial.attrs[COMPLETE] is False


def test_overwrite_resume_of_a_partial_from_other_weights_is_refused(tmp_path: Path, image: Path) -> None:
    run, output = tmp_path / "run", tmp_path / "out.zarr"
    _save_run(run, perturbed=False)
    segment_to_file(
        image,
        output,
        run,
        SegmentOptions(output_type="probs", direction="forward", block_size=2),
    )
    calls = iter([False, True])
    with pytest.raises(Interrupted):  # an --overwrite run stopped midway: a hidden partial sibling
        segment_to_file(
            image,
            output,
            run,
            SegmentOptions(output_type="probs", direction="forward", block_size=2, overwrite=True),
            stop=lambda: next(calls),
        )
    _save_run(run, perturbed=True)
    with pytest.raises(VolumeError, match=r"sam4em-partial\.zarr: was started by another run \(different model weights\)"):
        segment_to_file(
            image,
            output,
            run,
            SegmentOptions(output_type="probs", direction="forward", block_size=2, overwrite=True, resume=True),
        )


def test_resume_with_the_same_model_given_another_way_is_accepted(tmp_path: Path, image: Path) -> None:
    """The digest stands for the model: a run folder path, then the loaded model object, is one run."""
    run, output = tmp_path / "run", tmp_path / "out.zarr"
    _save_run(run, perturbed=False)
    _interrupted_after_one_block(image, output, run)
    loaded = build_model(run)
    segment_to_file(
        image,
        output,
        loaded,
        SegmentOptions(output_type="probs", direction="forward", block_size=2, resume=True),
    )
    with open_volume(output, "class1") as done:
        assert done.attrs[COMPLETE] is True


def test_dask_worker_refuses_a_model_that_changed_since_the_run_started(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save_run(run, perturbed=True)
    started_with = "0" * 64  # the digest the coordinator recorded for the model before it changed
    with pytest.raises(VolumeError, match="model changed after this segmentation started"):
        _cached_model(str(run), None, started_with)
