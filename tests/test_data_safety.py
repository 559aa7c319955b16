"""Inputs are read-only, outputs are replaced only when asked and only when complete, and files from
elsewhere (checkpoints, configs, weights) are refused rather than trusted."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml
from safetensors.torch import save_file

from sam4em.cli import main
from sam4em.fingerprint import digest_file as file_digest
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import COMPLETE, Interrupted, segment_to_file
from sam4em.io import create_volume, open_volume
from sam4em.models import CheckpointError, build_model, load_model, save_model
from sam4em.training.config import load_config
from sam4em.training.presets import resolve_preset
from sam4em.training.run_folder import prepare_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: 2 threads on 2 shared cores crawl

SEGMENT = ["--model", "test-tiny", "--device", "cpu", "--direction", "forward"]


def _image(depth: int = 4, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (depth, size, size), dtype=np.uint8)


def _labels(depth: int = 4, size: int = 64) -> np.ndarray:
    labels = np.zeros((depth, size, size), np.uint8)
    labels[:, 20:40, 16:36] = 255
    return labels


def _write(path: Path, data: np.ndarray, key: str = "raw") -> str:
    """Write `data` as .tif, .h5 or .zarr; returns the CLI spec (path or path:key)."""
    if path.suffix == ".tif":
        tifffile.imwrite(path, data, photometric="minisblack")
        return str(path)
    if path.suffix == ".h5":
        with h5py.File(path, "a") as f:
            f[key] = data
    else:
        with create_volume(path, data.shape, data.dtype, key=key, voxel_size=(30.0, 5.0, 5.0)) as volume:
            volume[:] = data
    return f"{path}:{key}"


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam4em: error: ") and "Traceback" not in err, err
    return lines[0]


# -- inputs are read-only ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["in.tif", "in.h5", "in.zarr"])
def test_segment_leaves_its_input_unchanged(name: str, tmp_path: Path) -> None:
    spec = _write(tmp_path / name, _image())
    before = file_digest(tmp_path / name)
    assert main(["segment", spec, str(tmp_path / "out.zarr"), *SEGMENT]) == 0
    assert file_digest(tmp_path / name) == before


def test_train_and_evaluate_leave_their_inputs_unchanged(tmp_path: Path) -> None:
    image = _write(tmp_path / "data.h5", _image(depth=6))
    labels = _write(tmp_path / "labels.zarr", _labels(depth=6), key="labels")
    config = {
        "classes": "mito=255",
        "volumes": [{"image": image, "labels": labels, "val_fraction": 0.34}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": 2, "batch_size": 1, "warmup_steps": 0},
        "val_every": 2,
        "val_samples": 1,
        "tensorboard": False,
        "device": "cpu",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pred = _write(tmp_path / "pred.tif", _labels(depth=6))
    mask = _write(tmp_path / "mask.h5", np.ones((6, 64, 64), np.uint8), key="mask")
    inputs = ["data.h5", "labels.zarr", "config.yaml", "pred.tif", "mask.h5"]
    before = {name: file_digest(tmp_path / name) for name in inputs}
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "config.yaml"), "--out", str(run), "--no-progress", "--preset", "cpu"]) == 0
    assert main(["evaluate", pred, labels, "--classes", "mito=255", "--pred-classes", "mito=255", "--mask", mask,
                 "--json", str(tmp_path / "scores.json")]) == 0
    assert {name: file_digest(tmp_path / name) for name in inputs} == before
    # The run folder holds its own copy of the config, not a link to the input.
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["classes"] == "mito=255"


# -- outputs: never replaced unless asked, and then only when complete ---------------------------
def test_existing_output_is_kept_when_refused_or_interrupted(tmp_path: Path) -> None:
    image = _write(tmp_path / "in.tif", _image())
    output = tmp_path / "out.zarr"
    assert main(["segment", image, str(output), *SEGMENT]) == 0
    before = file_digest(output)
    assert main(["segment", image, str(output), *SEGMENT, "--output-type", "probs"]) == 2
    assert file_digest(output) == before

    # --overwrite writes a hidden sibling and swaps it in only when complete: stopping midway keeps the old.
    calls: list[int] = []
    with pytest.raises(Interrupted):
        segment_to_file(
            image,
            output,
            "test-tiny",
            SegmentOptions(output_type="probs", direction="forward", block_size=2, overwrite=True),
            stop=lambda: calls.append(1) or len(calls) > 1,
        )
    assert file_digest(output) == before
    segment_to_file(
        image,
        output,
        "test-tiny",
        SegmentOptions(output_type="probs", direction="forward", block_size=2, overwrite=True, resume=True),
    )
    with open_volume(output, "class1") as probs:
        assert probs.attrs[COMPLETE] is True and probs.dtype == np.float16
    assert not list(tmp_path.glob(".*"))


# -- untrusted files -----------------------------------------------------------------------------
class _Payload:
    """Pickles to a call of Path.touch: whoever unpickles it with full pickle runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def _train_config(tmp_path: Path) -> Path:
    image = _write(tmp_path / "image.tif", _image())
    labels = _write(tmp_path / "labels.tif", _labels())
    config = {
        "classes": "mito=255",
        "volumes": [{"image": image, "labels": labels, "val_fraction": 0.5}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": 1, "batch_size": 1, "warmup_steps": 0},
        "tensorboard": False,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    config = _train_config(tmp_path)
    # A started run of this very config (its record written as `sam4em train` writes it), whose
    # checkpoint was replaced by a pickle that runs code when fully unpickled.
    prepare_run_dir(tmp_path / "run", load_config(config, preset=resolve_preset("auto")), resume=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"stage": 1, "step": 1, "model": _Payload(marker)}, checkpoint)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert "last.pt" in line and "delete it" in line
    assert not marker.exists()
    # The payload is real: full unpickling would have run it.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_yaml_with_python_tags_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    tag = f"!!python/object/apply:os.mkdir ['{marker}']"
    # A training config.
    config = _train_config(tmp_path)
    config.write_text(config.read_text() + f"seed: {tag}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "config.yaml" in _one_error_line(capsys)
    # A model folder's config.
    model_dir = tmp_path / "model"
    save_model(build_model("test-tiny", 1, pretrained=False), model_dir)
    (model_dir / "config.yaml").write_text(f"model: {tag}\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml: not a valid sam4em model config"):
        load_model(model_dir)
    image = _write(tmp_path / "in.tif", _image())
    assert main(["segment", image, str(tmp_path / "out.zarr"), "--model", str(model_dir)]) == 2
    assert "config.yaml" in _one_error_line(capsys)
    assert not marker.exists()
    # The tag is real: an unsafe loader would have run it.
    yaml.unsafe_load(f"seed: {tag}\n")
    assert marker.exists()


def test_weights_that_do_not_match_the_architecture_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "model"
    save_model(build_model("test-tiny", 1, pretrained=False), model_dir)
    other = {k: v.contiguous() for k, v in build_model("test-tiny", 2, pretrained=False).state_dict().items()}
    missing = sorted(other)[0]
    del other[missing]
    other["extra.weight"] = torch.zeros(3)
    save_file(other, str(model_dir / "model.safetensors"))
    image = _write(tmp_path / "in.tif", _image())
    assert main(["segment", image, str(tmp_path / "out.zarr"), "--model", str(model_dir)]) == 2
    line = _one_error_line(capsys)
    assert "model.safetensors" in line and "does not match the architecture" in line
    assert f"1 missing: {missing}" in line and "1 unexpected: extra.weight" in line
    assert "mismatched shape: " in line and "prompt_generator.queries (2, 2, 32) vs (1, 2, 32)" in line
    assert not (tmp_path / "out.zarr").exists()
