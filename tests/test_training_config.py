"""The training config's model section, stages per method, the method table, and validation Dice.

Fast: no model is trained here (the runs are in test_training.py and test_train_checks.py).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import yaml

from sam4em.evaluation.metrics import SemanticCounts
from sam4em.models import BuildOptions
from sam4em.training.config import ConfigError, config_from_dict, config_to_dict, validate
from sam4em.training.methods import METHOD_NAMES, METHODS, memory_methods
from sam4em.training.validation import dice_from_counts

VOLUMES = [{"image": "image.tif", "labels": "labels.tif"}]


def test_model_section_is_flat_in_yaml_and_held_as_build_options() -> None:
    config = config_from_dict({"volumes": VOLUMES, "model": {"base": "test-tiny", "lora_rank": 4, "finetune": "lora"}})
    assert config.model.base == "test-tiny"
    assert config.model.build == BuildOptions(lora_rank=4, finetune="lora")
    written = config_to_dict(config)["model"]
    assert written == {"base": "test-tiny", "pretrained": False, "image_size": None, "lora_rank": 4,
                       "lora_alpha": 16.0, "decoder_lora": True, "memory_capacity": 6, "finetune": "lora",
                       "multimask_fallback": False}
    # What a run records in config.yaml reads back as the same config (a resume compares the two).
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config


def test_model_section_refuses_options_the_method_decides_and_bad_types() -> None:
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) enhancer; known: base, decoder_lora"):
        config_from_dict({"volumes": VOLUMES, "model": {"enhancer": False}})
    with pytest.raises(ConfigError, match=r"model\.lora_rank: expected int, got 'four'"):
        config_from_dict({"volumes": VOLUMES, "model": {"lora_rank": "four"}})
    with pytest.raises(ConfigError, match=r"model\.finetune: 'half' is not one of lora, full"):
        config_from_dict({"volumes": VOLUMES, "model": {"finetune": "half"}})


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_stages_default_to_what_the_method_trains(method: str) -> None:
    config = config_from_dict({"volumes": VOLUMES, "method": method})
    assert config.stages == ([1, 2] if method in memory_methods() else [1])


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
    assert memory_methods() == ("sam4em", "sam4em-no-enhancer")
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
