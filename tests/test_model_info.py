"""Declared model identity (`model.info`), and the refusals around it: a registered name is not a
trained model (`load_model`), and `build_model` refuses arguments a trained run folder would ignore."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from sam4em.cli import main
from sam4em.models import (
    MODELS,
    BuildOptions,
    CheckpointError,
    ModelInfo,
    UntrainedModelError,
    build_model,
    load_model,
    save_model,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved test-tiny run folder with two named classes."""
    model = build_model("test-tiny", class_names=("mito", "synapse"), pretrained=False, memory_capacity=3)
    return save_model(model, tmp_path_factory.mktemp("info") / "run")


def test_registered_names_that_are_not_test_models_are_refused_in_one_line_naming_the_fix() -> None:
    for name in ("sam2.1-hiera-large", "cpu-small"):
        with pytest.raises(UntrainedModelError) as caught:
            load_model(name)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{name}: a base architecture, not a trained model")
        assert f"model.base: {name}" in message and "run folder" in message  # the fix: train, pass the folder
        assert "test-tiny" in message  # and what loads by name


def test_only_models_declared_as_tests_load_by_name() -> None:
    test_models = [name for name, spec in MODELS.items() if spec.is_test_model]
    assert test_models == ["test-tiny"]
    for name, spec in MODELS.items():
        if spec.is_test_model:
            model = load_model(name)
            assert model.info.base == name and not model.info.pretrained_base
            assert not model.training  # loaded models are ready to predict
        else:
            with pytest.raises(UntrainedModelError):
                load_model(name)


def test_segment_with_an_untrained_base_exits_2_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the name was checked")

    for where in ("sam4em.models.load_model", "sam4em.inference.run.load_model", "sam4em.models.serialization.load_model"):
        monkeypatch.setattr(where, refuse)
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((2, 32, 32), np.uint8), photometric="minisblack")
    code = main(["segment", str(image), str(tmp_path / "out.zarr"), "--model", "sam2.1-hiera-large"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "sam2.1-hiera-large: a base architecture, not a trained model" in lines[0]
    assert "sam4em train" in lines[0] and "run folder" in lines[0]
    assert not (tmp_path / "out.zarr").exists()


def test_info_round_trips_through_save_and_load(run: Path) -> None:
    model = build_model("test-tiny", class_names=("mito", "synapse"), pretrained=False, memory_capacity=3)
    loaded = load_model(run)
    assert loaded.info == model.info
    assert loaded.info.class_names == ("mito", "synapse") and loaded.num_classes == 2
    assert loaded.info.build_options == BuildOptions(
        num_classes=2, image_size=64, finetune="full", memory_capacity=3, shared_memory=True, joint_detail=True
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.info.class_names = ("other",)  # type: ignore[misc]


def test_baseline_info_round_trips_through_save_and_load(tmp_path: Path) -> None:
    from sam4em.models.unet import UNet3D

    model = UNet3D(num_classes=2, image_size=32, clip_length=4, class_names=["mito", "glia"])
    loaded = load_model(save_model(model, tmp_path / "unet"))
    assert isinstance(loaded, UNet3D)
    assert loaded.info == model.info
    assert (loaded.info.base, loaded.info.class_names, loaded.info.clip_length) == ("unet3d", ("mito", "glia"), 4)
    assert loaded.info.is_volumetric


def test_identity_is_read_from_info_and_cannot_be_set_beside_it(run: Path) -> None:
    from sam4em.models.unet import UNet2D, UNet3D

    loaded = load_model(run)
    assert (loaded.num_classes, loaded.image_size, loaded.memory_capacity) == (2, 64, 3)
    for name in ("num_classes", "image_size", "memory_capacity"):
        with pytest.raises(AttributeError):
            setattr(loaded, name, 5)
    assert build_model("test-tiny", pretrained=False, memory=False).memory_capacity == 0
    unet = UNet3D(num_classes=2, image_size=32, clip_length=4)
    assert (unet.num_classes, unet.image_size, unet.info.clip_length, unet.memory_capacity) == (2, 32, 4, 0)
    assert not hasattr(unet, "clip_length")  # the clip length lives in info only
    assert UNet2D(num_classes=1, image_size=32).memory_capacity == 0


def test_build_model_with_a_run_folder_refuses_arguments_it_would_ignore(run: Path) -> None:
    assert build_model(run).info.class_names == ("mito", "synapse")  # the folder alone is fine
    for arguments in ({"num_classes": 3}, {"pretrained": False}, {"class_names": ["a", "b"]},
                      {"base": "test-tiny"}, {"image_size": 128}):
        with pytest.raises(TypeError) as caught:
            build_model(run, **arguments)
        message = str(caught.value)
        assert "\n" not in message and str(run) in message
        assert f"{next(iter(arguments))} would be ignored" in message and "load_model(folder)" in message


def test_build_model_takes_class_names_and_refuses_a_count_that_disagrees() -> None:
    model = build_model("test-tiny", class_names=["mito", "synapse", "glia"], pretrained=False)
    assert model.num_classes == 3 and model.info.class_names == ("mito", "synapse", "glia")
    with pytest.raises(ValueError, match="num_classes=2 but 3 class names"):
        build_model("test-tiny", 2, class_names=["mito", "synapse", "glia"], pretrained=False)
    with pytest.raises(TypeError, match="not the string 'mito'"):
        build_model("test-tiny", class_names="mito", pretrained=False)
    with pytest.raises(TypeError, match="base='cpu-small' is only for a SAM2 weight file or folder"):
        build_model("test-tiny", base="cpu-small", pretrained=False)


def test_model_info_refuses_one_name_too_many() -> None:
    with pytest.raises(ValueError, match=r"2 class names \(a, b\) for a model of 1 classes"):
        ModelInfo(base="test-tiny", build_options=BuildOptions(image_size=64, shared_memory=False, joint_detail=False),
                  class_names=("a", "b"))


def test_a_record_whose_class_names_disagree_with_its_classes_is_refused(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for file in run.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("- synapse\n", ""))
    with pytest.raises(CheckpointError) as caught:
        load_model(copy)
    assert str(caught.value).startswith(f"{config}: 'model.class_names' has 1 names (mito) for 2 classes")
