"""The training config's model section, stages per method, the method table, and validation Dice.

Fast: no model is trained here (the runs are in test_training.py and test_train_checks.py).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sam4em.evaluation.metrics import SemanticCounts
from sam4em.models import BuildOptions
from sam4em.models.unet import UNet2D, UNet3D
from sam4em.training.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    VolumeConfig,
    config_from_dict,
    config_to_dict,
    validate,
)
from sam4em.training.methods import METHOD_NAMES, METHODS
from sam4em.training.preflight import warn_untrained_start
from sam4em.training.stage import stage_settings
from sam4em.training.trainer import train
from sam4em.training.validation import dice_from_counts

VOLUMES = [{"image": "image.tif", "labels": "labels.tif"}]


def test_model_section_is_flat_in_yaml_and_held_as_build_options() -> None:
    config = config_from_dict({"volumes": VOLUMES, "model": {"base": "test-tiny", "lora_rank": 4, "finetune": "lora"}})
    assert config.model.base == "test-tiny"
    assert config.model.build == BuildOptions(lora_rank=4, finetune="lora")
    written = config_to_dict(config)["model"]
    assert written == {"base": "test-tiny", "pretrained": False, "image_size": None, "lora_rank": 4,
                       "lora_alpha": 16.0, "decoder_lora": True, "memory_capacity": 6, "shared_memory": None,
                       "joint_detail": None, "joint_decoder": False, "finetune": "lora", "multimask_fallback": False}
    # What a run records in config.yaml reads back as the same config (a resume compares the two).
    recorded = config_to_dict(config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))))
    assert recorded == config_to_dict(config)


#: A value other than the default for every `BuildOptions` field.
OTHER_BUILD_VALUES = {
    "num_classes": 3, "image_size": 96, "finetune": "lora", "lora_rank": 4, "lora_alpha": 8.0, "decoder_lora": False,
    "memory_capacity": 3, "prompt_tokens": 4, "enhancer": False, "detail_head": False, "prompt_generator": False,
    "two_stage": False, "memory": False, "shared_memory": True, "joint_detail": True,
    "multimask_fallback": True, "joint_decoder": True,
}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(BuildOptions)])
def test_a_build_option_set_in_code_is_recorded_or_refused_never_lost(name: str) -> None:
    assert set(OTHER_BUILD_VALUES) == {f.name for f in dataclasses.fields(BuildOptions)}
    build = BuildOptions(**{name: OTHER_BUILD_VALUES[name]})
    config = TrainConfig(volumes=[VolumeConfig(image="image.tif", labels="labels.tif")], model=ModelConfig(build=build))
    try:
        validate(config)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"model.build.{name}: ") and "\n" not in message
        assert ("`classes`" if name == "num_classes" else "choose a method") in message
        return
    # Accepted: it survives config.yaml, which the resume comparison reads.
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))).model.build == build


def test_a_build_option_the_method_decides_names_the_methods_that_set_it() -> None:
    config = TrainConfig(volumes=[VolumeConfig(image="image.tif", labels="labels.tif")],
                         model=ModelConfig(build=BuildOptions(enhancer=False)))
    with pytest.raises(ConfigError, match=r"^model\.build\.enhancer: set by the method.*\(sam4em-no-enhancer, samed\)$"):
        validate(config)


def test_model_section_refuses_options_the_method_decides_and_bad_types() -> None:
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) enhancer; known: base, decoder_lora"):
        config_from_dict({"volumes": VOLUMES, "model": {"enhancer": False}})
    with pytest.raises(ConfigError, match=r"model\.lora_rank: expected int, got 'four'"):
        config_from_dict({"volumes": VOLUMES, "model": {"lora_rank": "four"}})
    with pytest.raises(ConfigError, match=r"model\.finetune: 'half' is not one of lora, full"):
        config_from_dict({"volumes": VOLUMES, "model": {"finetune": "half"}})


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_stages_default_to_what_the_method_trains(method: str) -> None:
    expected = [1, 2] if METHODS[method].has_memory else [1]
    config = config_from_dict({"volumes": VOLUMES, "method": method})
    assert config.stages is None and config.stages_to_run == expected
    assert config_to_dict(config)["stages"] == expected  # config.yaml says which stages ran
    # A config built in Python resolves its stages in the same one place.
    assert TrainConfig(method=method).stages_to_run == expected


def test_train_checks_a_config_built_in_python_before_touching_the_run_folder(tmp_path: Path) -> None:
    volumes = [VolumeConfig(image="image.tif", labels="labels.tif")]
    with pytest.raises(ConfigError, match=r"stages: samed has no memory"):
        train(TrainConfig(method="samed", stages=[1, 2], volumes=volumes), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model\.build\.memory: set by the method"):
        train(TrainConfig(volumes=volumes, model=ModelConfig(build=BuildOptions(memory=False))), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stages", [[1, 2], [2]])
@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if not METHODS[m].has_memory])
def test_stage_2_for_a_method_without_memory_is_refused_not_rewritten(method: str, stages: list[int]) -> None:
    with pytest.raises(ConfigError, match=rf"stages: {method} has no memory.*set stages: \[1\]"):
        config_from_dict({"volumes": VOLUMES, "method": method, "stages": stages})
    # validate() only checks: a config built in code is refused as it is, never changed.
    config = config_from_dict({"volumes": VOLUMES, "method": method})
    config.stages = list(stages)
    before = copy.deepcopy(config)
    with pytest.raises(ConfigError, match="has no memory"):
        validate(config)
    assert config == before


def test_unknown_method_names_the_methods() -> None:
    with pytest.raises(ConfigError, match="method: 'sam3' is not one of " + ", ".join(METHOD_NAMES)):
        config_from_dict({"volumes": VOLUMES, "method": "sam3"})


def test_method_table_traits() -> None:
    assert [m for m in METHOD_NAMES if METHODS[m].has_memory] == ["sam4em", "sam4em-no-enhancer"]
    assert [m for m in METHOD_NAMES if METHODS[m].volumetric] == ["unet3d"]
    assert [m for m in METHOD_NAMES if METHODS[m].from_scratch] == ["unet2d", "unet3d"]
    fields = {f.name for f in dataclasses.fields(BuildOptions)}
    assert all(set(dict(spec.build)) <= fields for spec in METHODS.values())


def test_validation_dice_equals_the_evaluation_metric() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (3, 6))
    counts[:, 0] = 0  # a class absent from prediction and truth
    counts[0, 1] = 0  # a class never hit
    expected = [SemanticCounts(int(tp), int(fp), int(fn), 0).dice for tp, fp, fn in counts.T]
    np.testing.assert_array_equal(dice_from_counts(torch.from_numpy(counts).double()), expected)
    assert dice_from_counts(torch.from_numpy(counts).double())[0] == 1.0


def test_a_volumetric_model_trains_on_the_clip_length_it_declares_in_every_stage() -> None:
    config = config_from_dict({"volumes": VOLUMES, "method": "unet3d", "stage2": {"clip_length": 8}})
    unet3d = UNet3D(num_classes=1, image_size=32, clip_length=4)
    assert [stage_settings(unet3d, config, s).clip_length for s in (1, 2)] == [4, 4]
    unet2d = UNet2D(num_classes=1, image_size=32)
    assert [stage_settings(unet2d, config, s).clip_length for s in (1, 2)] == [8, 8]


def test_a_learning_rate_in_exponent_notation_is_a_number() -> None:
    """YAML 1.1 (PyYAML) reads 1e-4 without a dot as a string; it is how learning rates are written."""
    config = config_from_dict({"volumes": VOLUMES, "stage1": {"lr": "1e-4"}}, ["stage2.lr=2E-5"])
    assert (config.stage1.lr, config.stage2.lr) == (1e-4, 2e-5)
    with pytest.raises(ConfigError, match=r"stage1.lr: expected float, got 'fast'"):
        config_from_dict({"volumes": VOLUMES, "stage1": {"lr": "fast"}})


@pytest.mark.parametrize(("override", "message"), [
    ("loss.class_weights=[1.0,2.0,3.0]", r"loss.class_weights: one weight >= 0 per class \(mito, glia\)"),
    ("loss.class_weights=[1.0]", r"loss.class_weights: one weight >= 0 per class"),
    ("loss.class_weights=[0.0,0.0]", r"not all 0"),
    ("stage1.max_seconds=0", r"stage1.max_seconds: must be > 0"),
    ("stage2.max_seconds=-5", r"stage2.max_seconds: must be > 0"),
    ("classes=mito=", r"classes: entry 'mito='"),
    ("foreground_fraction=3", r"foreground_fraction: must be in \[0, 1\]"),
])
def test_values_that_cannot_train_are_refused_naming_the_field(override: str, message: str) -> None:
    """Each used to fail at the first step (class weights that do not broadcast), divide by zero (a time
    budget of 0), train one step silently (a negative one), or name no field."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"volumes": VOLUMES, "classes": "mito=255,glia=128"}, [override])
    # A stage that does not run needs no budget (the benchmark gives a 2D U-Net's absent stage 2 none).
    config_from_dict({"volumes": VOLUMES, "stages": [1]}, ["stage2.max_seconds=0"])
    volumes = [{**VOLUMES[0], "z_range": [0, 5, 9]}]
    with pytest.raises(ConfigError, match=r"volumes\[0\].z_range: expected \[start, stop\], got \[0, 5, 9\]"):
        config_from_dict({"volumes": volumes})


def test_set_reaches_into_a_volume_by_its_index() -> None:
    volumes = [dict(VOLUMES[0]), {"image": "b.tif", "labels": "b_labels.tif"}]
    config = config_from_dict({"volumes": volumes}, ["volumes[1].val_fraction=0.3", "volumes[0].labels=new.tif"])
    assert (config.volumes[0].labels, config.volumes[1].val_fraction) == ("new.tif", 0.3)
    assert "val_fraction" not in volumes[1] and volumes[0]["labels"] == "labels.tif"  # the caller's data is left alone
    with pytest.raises(ConfigError, match=r"--set 'volumes\[2\].labels=x.tif': the config has no volumes\[2\]"):
        config_from_dict({"volumes": volumes}, ["volumes[2].labels=x.tif"])


def test_stage_2_alone_without_init_from_warns_that_stage_1_s_parts_start_untrained() -> None:
    with pytest.warns(UserWarning, match=r"stages: \[2\] without init_from: the prompt generator and decoders"):
        warn_untrained_start(config_from_dict({"volumes": VOLUMES, "stages": [2]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_untrained_start(config_from_dict({"volumes": VOLUMES, "stages": [2], "init_from": "runs/stage1"}))
        warn_untrained_start(config_from_dict({"volumes": VOLUMES, "stages": [1, 2]}))
