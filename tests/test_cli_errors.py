"""Every CLI failure a person can fix: exit 2, one stderr line naming the file, no traceback.

The segment cases also prove the refusal comes before the model is loaded (the slow part).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

from sam4em.cli import main
from sam4em.io import VolumeError


def _tif(path: Path, shape: tuple[int, int, int] = (4, 32, 32)) -> Path:
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), photometric="minisblack")
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """Run the CLI; assert exit 2 and one stderr line, without traceback, naming every one of `names`."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("sam4em: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("sam4em.models.load_model", refuse)


@pytest.mark.usefixtures("no_model_load")
class TestSegment:
    def test_missing_input_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        line = _fails(
            ["segment", str(tmp_path / "missing.tif"), str(tmp_path / "out.zarr"), "--model", "test-tiny"],
            capsys, "missing.tif",
        )
        assert "no such file" in line

    def test_missing_key_in_h5(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        with h5py.File(tmp_path / "vol.h5", "w") as f:
            f["raw"] = np.zeros((2, 16, 16), np.uint8)
        line = _fails(
            ["segment", f"{tmp_path / 'vol.h5'}:nokey", str(tmp_path / "out.zarr"), "--model", "test-tiny"],
            capsys, "vol.h5", "nokey",
        )
        assert "'raw'" in line and "path.h5:KEY" in line

    def test_unknown_model_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        line = _fails(
            ["segment", str(_tif(tmp_path / "in.tif")), str(tmp_path / "out.zarr"), "--model", "sam9-giant"],
            capsys, "sam9-giant",
        )
        assert "test-tiny" in line  # the names that would work

    def test_unknown_class_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        line = _fails(
            ["segment", str(_tif(tmp_path / "in.tif")), str(tmp_path / "out.zarr"), "--model", "test-tiny",
             "--classes", "mito"],
            capsys, "test-tiny", "'mito'",
        )
        assert "class1" in line  # the classes the model does predict

    def test_output_equal_to_input(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        image = _tif(tmp_path / "in.tif")
        _fails(["segment", str(image), str(image), "--model", "test-tiny", "--overwrite"], capsys, "in.tif")
        # Through a symlink too: the same file under another name.
        (tmp_path / "link.tif").symlink_to(image)
        _fails(["segment", str(image), str(tmp_path / "link.tif"), "--model", "test-tiny", "--overwrite"],
               capsys, "link.tif")

    def test_existing_output_without_overwrite(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "out.zarr").mkdir()
        line = _fails(
            ["segment", str(_tif(tmp_path / "in.tif")), str(tmp_path / "out.zarr"), "--model", "test-tiny"],
            capsys, "out.zarr",
        )
        assert "--overwrite" in line

    @pytest.mark.parametrize(("tile", "problem"), [("100", "must fit"), ("0", "must be positive")])
    def test_bad_tile(self, tile: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        line = _fails(
            ["segment", str(_tif(tmp_path / "in.tif")), str(tmp_path / "out.zarr"), "--model", "test-tiny",
             "--tile", tile],
            capsys, "test-tiny", problem,
        )
        assert "--tile" in line

    def test_output_larger_than_free_space(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def nearly_full(path: Any) -> Any:
            return type("Usage", (), {"total": 10**9, "used": 10**9 - 500, "free": 500})()

        monkeypatch.setattr("sam4em.inference.request.shutil.disk_usage", nearly_full)
        line = _fails(
            ["segment", str(_tif(tmp_path / "in.tif")), str(tmp_path / "sub" / "out.zarr"), "--model", "test-tiny",
             "--output-type", "probs"],
            capsys, "out.zarr",
        )
        # 4 x 32 x 32 voxels, float16: 8.2 KB; the parent that exists is measured.
        assert "8.2 KB" in line and "500 B free" in line and str(tmp_path) in line
        assert not (tmp_path / "sub").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"missing\.tif"):
        main(["--debug", "segment", str(tmp_path / "missing.tif"), str(tmp_path / "o.zarr"), "--model", "test-tiny"])


def test_evaluate_shape_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _tif(tmp_path / "pred.tif", (4, 8, 8)), _tif(tmp_path / "gt.tif", (4, 8, 9))
    line = _fails(["evaluate", str(pred), str(gt), "--classes", "mito=255"], capsys, "pred.tif", "gt.tif")
    assert "(4, 8, 8)" in line and "(4, 8, 9)" in line


def test_train_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["train", str(tmp_path / "nothere.yaml"), "--out", str(tmp_path / "run")], capsys, "nothere.yaml")
    assert "configs/" in line
    assert not (tmp_path / "run").exists()
