"""Layer-wise learning-rate decay for SAM2's image encoder (`StageConfig.layer_decay`), as MAE and BEiT
fine-tune a pretrained encoder: the deeper the block, the closer to the full rate."""

from __future__ import annotations

import pytest

from sam4em.models import build_model
from sam4em.training.config import ConfigError, StageConfig, config_from_dict
from sam4em.training.step import parameter_groups

LR = 1e-3


@pytest.fixture(scope="module")
def model():
    return build_model("test-tiny", class_names=["mito"], pretrained=False)


def _rates(model, groups) -> dict[str, float]:
    """Each trainable parameter's name -> the rate of the one group holding it."""
    holder = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert len(holder) == sum(len(group["params"]) for group in groups)  # no parameter in two groups
    return {name: holder[id(p)] for name, p in model.named_parameters() if id(p) in holder}


def test_no_decay_keeps_the_groups_checkpoints_were_saved_with(model):
    """One group in stage 1; [memory, the rest] in stage 2: optimiser states saved before layer_decay
    existed load into these groups."""
    groups = parameter_groups(model, 1, StageConfig(lr=LR))
    assert len(groups) == 1 and groups[0]["lr"] == LR
    assert len(groups[0]["params"]) == sum(p.requires_grad for p in model.parameters())
    memory, rest = parameter_groups(model, 2, StageConfig(lr=LR, adapter_lr_scale=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    assert memory["lr"] == LR and all(names[id(p)].startswith("memory.") for p in memory["params"])
    assert rest["lr"] == pytest.approx(LR * 0.1) and not any(names[id(p)].startswith("memory.") for p in rest["params"])


def test_encoder_blocks_learn_slower_the_nearer_they_are_to_the_pixels(model):
    groups = parameter_groups(model, 1, StageConfig(lr=LR, layer_decay=0.5))
    assert groups[0]["lr"] == LR  # the full rate first: metrics.csv logs the first group's rate
    rates = _rates(model, groups)
    blocks = 1 + max(int(n.split(".")[3]) for n in rates if n.startswith("image_encoder.backbone.blocks."))
    assert blocks >= 2

    def rate(prefix: str) -> float:
        found = {r for n, r in rates.items() if n.startswith(prefix)}
        assert len(found) == 1, prefix
        return found.pop()

    assert rate(f"image_encoder.backbone.blocks.{blocks - 1}.") == pytest.approx(LR * 0.5)
    assert rate("image_encoder.backbone.blocks.0.") == pytest.approx(LR * 0.5**blocks)
    assert rate("image_encoder.backbone.patch_embed.") == pytest.approx(LR * 0.5 ** (blocks + 1))
    assert rate("image_encoder.neck.") == LR
    assert all(r == LR for n, r in rates.items() if not n.startswith("image_encoder."))


def test_stage_2_keeps_the_memory_at_the_full_rate(model):
    settings = StageConfig(lr=LR, adapter_lr_scale=0.1, layer_decay=0.5)
    rates = _rates(model, parameter_groups(model, 2, settings))
    assert {r for n, r in rates.items() if n.startswith("memory.")} == {LR}
    assert rates["image_encoder.neck.convs.0.weight"] == pytest.approx(LR * 0.1)
    assert max(r for n, r in rates.items() if n.startswith("image_encoder.backbone.")) == pytest.approx(LR * 0.1 * 0.5)


@pytest.mark.parametrize("decay", [0.0, 1.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ConfigError, match="layer_decay"):
        config_from_dict({"volumes": [{"image": "a.tif", "labels": "b.tif"}], "stage1": {"layer_decay": decay}})
