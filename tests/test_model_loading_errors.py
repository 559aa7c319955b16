"""Damaged or hand-edited run folders are refused in one line naming the file and the fix (exit 2),
never a traceback from deep inside model construction (issue 11: "tracebacks where a one-line error
belongs"). Each case starts from a real saved test-tiny run folder and breaks one thing.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml

from sam4em.cli import main
from sam4em.models import build_model, load_model, save_model
from sam4em.models.checkpoint_files import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(build_model("test-tiny", pretrained=False), tmp_path_factory.mktemp("saved") / "run")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint8), photometric="minisblack")
    return path


class _RunsCode:
    """A pickle that would run code if unpickled: it must be refused, never executed."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def _truncate_weights(run: Path) -> None:
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garble_weights(run: Path) -> None:
    (run / "model.safetensors").write_bytes(b"\x00" * 64)


def _edit_record(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        document = yaml.safe_load((run / "config.yaml").read_text())
        edit(document["model"])
        (run / "config.yaml").write_text(yaml.safe_dump(document))

    return apply


def _base_weights_pickle(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run.parent / name).write_bytes(pickle.dumps(_RunsCode()))
        _edit_record(lambda model: model.update(base_weights=str(run.parent / name)))(run)

    return apply


CASES = {
    "truncated_weights": (_truncate_weights, "model.safetensors", "damaged"),
    "corrupt_weights": (_garble_weights, "model.safetensors", "damaged"),
    "unknown_build_key": (_edit_record(lambda m: m["build"].update(colour="red")), "config.yaml", "unknown key(s) colour"),
    "missing_weights_key": (_edit_record(lambda m: m.pop("weights")), "config.yaml", "'model.weights' is missing"),
    "absurd_image_size": (_edit_record(lambda m: m["build"].update(image_size=10**6)), "config.yaml", "image_size"),
    "negative_image_size": (_edit_record(lambda m: m["build"].update(image_size=-64)), "config.yaml", "image_size"),
    "base_weights_pickle": (_base_weights_pickle("evil.pkl"), "evil.pkl", "never unpickles"),
    "base_weights_pickle_named_pt": (_base_weights_pickle("sam2.1_hiera_tiny.pt"), "sam2.1_hiera_tiny.pt", "never unpickles"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_run_folder_is_refused_in_one_line_naming_the_file(
    case: str, saved_run: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    break_it, file_name, problem = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    break_it(run)
    monkeypatch.chdir(tmp_path)  # where the pickle would write PWNED if it ran

    code = main(["segment", str(image), str(tmp_path / "out.zarr"), "--model", str(run), "--device", "cpu",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sam4em: error: "), err
    assert file_name in err[0] and problem in err[0], err[0]
    assert not (tmp_path / "out.zarr").exists()
    with pytest.raises(CheckpointError):  # the library raises the same refusal, as a ValueError
        load_model(run)
    assert not (tmp_path / "PWNED").exists()


def test_a_run_that_has_not_saved_a_model_yet_says_so_and_how_to_finish_it(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam4em.training.config import TrainConfig
    from sam4em.training.run_folder import prepare_run_dir

    run = tmp_path / "run"
    prepare_run_dir(run, TrainConfig(), resume=False)  # what `sam4em train` writes when it starts
    code = main(["segment", str(image), str(tmp_path / "out.zarr"), "--model", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "has not saved a model yet" in err and f"--out {run} --resume" in err, err
    assert not (tmp_path / "out.zarr").exists()
