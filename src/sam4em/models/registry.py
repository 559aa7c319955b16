"""The registry of named bases: `ModelSpec` (SAM2 architecture sizes, where pretrained weights live) and `MODELS`.

Names:
- ``sam2.1-hiera-{tiny,small,base-plus,large}``: Meta's SAM2.1 architectures; pretrained weights from
  the Hugging Face hub (``facebook/sam2.1-hiera-*``) or its local cache, a local directory in that
  format, or Meta's original ``sam2.1_hiera_*.pt`` file. Fine-tuned with LoRA (encoder frozen).
- ``cpu-small``: a reduced Hiera sized for training from scratch on a CPU. Fully trained.
- ``test-tiny``: under 1 M parameters, for unit tests (`ModelSpec.is_test_model`). Fully trained.
- a ``sam4em pretrain`` run folder (`base_spec`): its base's architecture with the EM-pretrained image
  encoder, fine-tuned with LoRA as Meta's weights are (see `sam4em.models.encoder_weights`).

A name is an architecture, not a trained model: `sam4em.models.builder.build_model` composes a
SAM4EM on it, `sam4em train` trains one; only test models may be loaded by name with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam4em.models.encoder_weights import is_encoder_folder, read_pretrain_record
from sam4em.models.info import FineTune

__all__ = ["MODELS", "ModelSpec", "base_spec", "get_spec", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """A named base: SAM2 architecture sizes and where its pretrained weights live."""

    name: str
    description: str
    backbone: dict[str, Any]
    vision: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=dict)
    prompt_encoder: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    image_size: int = 512
    prompt_tokens: int = 4
    hub_id: str | None = None
    meta_checkpoint_url: str | None = None
    finetune: FineTune = "full"
    # A model for tests only: `load_model(name)` gives it with seeded random weights (any other name
    # is refused there: it is an architecture, not a trained model).
    is_test_model: bool = False

    @property
    def has_pretrained_weights(self) -> bool:
        return self.hub_id is not None


def _hiera(hidden: int, heads: int, blocks: list[int], global_blocks: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "embed_dim_per_stage": [hidden * 2**i for i in range(4)],
        "num_attention_heads_per_stage": [heads * 2**i for i in range(4)],
        "blocks_per_stage": blocks,
        "global_attention_blocks": global_blocks,
        **extra,
    }


def _sam2(name: str, short: str, backbone: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=f"Meta SAM2.1 Hiera-{short}",
        backbone=backbone,
        vision={"backbone_channel_list": list(reversed(backbone["embed_dim_per_stage"]))},
        hub_id=f"facebook/{name}",
        meta_checkpoint_url=f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name.replace('-', '_')}.pt",
        finetune="lora",
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _sam2("sam2.1-hiera-tiny", "tiny", _hiera(96, 1, [1, 2, 7, 2], [5, 7, 9])),
        _sam2("sam2.1-hiera-small", "small", _hiera(96, 1, [1, 2, 11, 2], [7, 10, 13])),
        _sam2(
            "sam2.1-hiera-base-plus",
            "base-plus",
            _hiera(112, 2, [2, 3, 16, 3], [12, 16, 20], window_positional_embedding_background_size=[14, 14]),
        ),
        _sam2(
            "sam2.1-hiera-large",
            "large",
            _hiera(144, 2, [2, 6, 36, 4], [23, 33, 43], window_size_per_stage=[8, 4, 16, 8]),
        ),
        ModelSpec(
            name="cpu-small",
            description="reduced Hiera (embed 48, blocks 1-1-3-1, FPN 128) for training from scratch on a CPU",
            backbone=_hiera(48, 1, [1, 1, 3, 1], [4], window_size_per_stage=[8, 4, 8, 4]),
            vision={"backbone_channel_list": [384, 192, 96, 48], "fpn_hidden_size": 128},
            decoder={"hidden_size": 128, "mlp_dim": 512, "iou_head_hidden_dim": 128},
            prompt_encoder={"hidden_size": 128},
            memory={
                "memory_attention_hidden_size": 128,
                "memory_attention_num_layers": 2,
                "memory_attention_feed_forward_hidden_size": 512,
                "memory_encoder_hidden_size": 128,
                "mask_downsampler_embed_dim": 128,
                "memory_fuser_embed_dim": 128,
                "memory_fuser_intermediate_dim": 512,
            },
            image_size=256,
        ),
        ModelSpec(
            name="test-tiny",
            description="a few hundred thousand parameters, random weights, for unit tests",
            backbone=_hiera(8, 1, [1, 1, 2, 1], [3], window_size_per_stage=[4, 4, 4, 2]),
            vision={"backbone_channel_list": [64, 32, 16, 8], "fpn_hidden_size": 32},
            decoder={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 4, "iou_head_hidden_dim": 32},
            prompt_encoder={"hidden_size": 32},
            memory={
                "memory_attention_hidden_size": 32,
                "memory_attention_num_layers": 1,
                "memory_attention_feed_forward_hidden_size": 64,
                "memory_encoder_hidden_size": 32,
                "mask_downsampler_embed_dim": 32,
                "mask_downsampler_stride": 4,
                "memory_fuser_embed_dim": 32,
                "memory_fuser_intermediate_dim": 64,
                "memory_fuser_num_layers": 1,
            },
            image_size=64,
            prompt_tokens=2,
            is_test_model=True,
        ),
    )
}


def list_models() -> list[str]:
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())} or give a path") from None


def base_spec(base: str | Path) -> ModelSpec:
    """The architecture of a base: a registry name or a `sam4em pretrain` run folder."""
    if is_encoder_folder(base):
        return get_spec(read_pretrain_record(base)["base"])
    return get_spec(str(base))
