"""Composing a SAM4EM from a base: SAM2's parts (transformers' ``Sam2VideoModel``) made at any image
size, pretrained weights loaded into them, then assembled with the adapters into `SAM4EM`.

Random weights are seeded from the base's name (`seed_for`), so one name means one model in every process.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
from torch import nn
from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

from sam4em.models.detail_head import DetailHead
from sam4em.models.encoder_weights import is_encoder_folder
from sam4em.models.enhancer import FeatureEnhancer
from sam4em.models.info import BuildOptions, FineTune, ModelInfo, class_names_tuple
from sam4em.models.joint_decoder import JointDecoding
from sam4em.models.lora import DECODER_TARGETS, ENCODER_TARGETS, add_lora
from sam4em.models.memory import SliceMemory
from sam4em.models.prompt_generator import PromptGenerator, StaticPrompts
from sam4em.models.registry import ModelSpec
from sam4em.models.sam4em import SAM4EM
from sam4em.models.trainable import set_trainable
from sam4em.models.weights import load_sam2_weights

__all__ = ["compose", "resolve_options", "sam2_config", "seed_for"]


def seed_for(name: str) -> int:
    """A stable seed from a model name (Python's hash() is salted per process; crc32 is not)."""
    return zlib.crc32(name.encode())


def sam2_config(
    spec: ModelSpec, *, image_size: int, memory_capacity: int, multimask_fallback: bool = False
) -> Sam2VideoConfig:
    """The transformers config of `spec`'s SAM2 at `image_size` (square, divisible by 32)."""
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (Hiera's coarsest stride), got {image_size}")
    sizes = [image_size // 4, image_size // 8, image_size // 16]
    backbone = {"model_type": "sam2_hiera_det_model", "image_size": [image_size, image_size], **spec.backbone}
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_feature_sizes": [[s, s] for s in sizes],
        **spec.vision,
    }
    # Stability-based mask selection (Meta's predictors: delta 0.05, threshold 0.98, transformers'
    # defaults) acts in eval mode only; without `multimask_fallback` SAM4EM always uses token 0.
    decoder = {"dynamic_multimask_via_stability": multimask_fallback, **spec.decoder}
    num_maskmem = 7 if spec.has_pretrained_weights else memory_capacity + 1
    return Sam2VideoConfig(
        image_size=image_size,
        vision_config=vision,
        prompt_encoder_config={"image_size": image_size, **spec.prompt_encoder},
        mask_decoder_config=decoder,
        memory_attention_rope_feat_sizes=[sizes[2], sizes[2]],
        num_maskmem=num_maskmem,
        **spec.memory,
    )


def compose(
    spec: ModelSpec,
    options: BuildOptions,
    *,
    weights_source: str | Path | None = None,
    class_names: Sequence[str] = (),
) -> SAM4EM:
    """Make the SAM2 parts of `spec`, load pretrained weights from `weights_source`, compose a SAM4EM
    whose `info` declares `spec`, the resolved `options` and `class_names`."""
    options = resolve_options(spec, options, weights_source=weights_source)
    info = ModelInfo(
        base=spec.name,
        build_options=options,
        class_names=class_names_tuple(class_names),
        pretrained_base=weights_source is not None,
        weights_source=str(weights_source) if weights_source is not None else None,
    )
    config = sam2_config(
        spec, image_size=info.image_size, memory_capacity=options.memory_capacity,
        multimask_fallback=options.multimask_fallback,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(spec.name))
        sam2 = Sam2VideoModel(config)
        if weights_source is None:
            # SAM2 initialises this table with a truncated normal; transformers' init leaves zeros,
            # which would make every memory distance look alike until trained. The object-absent
            # embedding stays zero: it changes nothing until trained (the random object-score head
            # of an untrained model would otherwise mark classes absent at random).
            nn.init.trunc_normal_(sam2.memory_temporal_positional_encoding, std=0.02)
        else:
            load_sam2_weights(sam2, weights_source)
        assert options.finetune is not None  # resolved
        return _assemble(sam2, spec, info, finetune=options.finetune)


def resolve_options(spec: ModelSpec, options: BuildOptions, *, weights_source: str | Path | None) -> BuildOptions:
    """`options` with what they leave to the base and its weights filled in: image size, fine-tuning,
    and whether the classes share the memory and the detail head."""
    # Pretrained weights (Meta's or an EM-pretrained encoder) are fine-tuned with LoRA unless told otherwise.
    finetune: FineTune = options.finetune or ("lora" if weights_source is not None else spec.finetune)
    # Both together made `segment` 1.4x faster with 3 classes and were ahead of per class in each of 18
    # VNC runs from scratch (docs/benchmarks.md, seventh round); the joint detail head carried the
    # accuracy, the shared memory (alone within the seed spread) most of the speed. The detail head is
    # SAM4EM's own and never pretrained: joint wherever there is one. SAM2's pretrained memory (Meta's
    # weights) was trained per object and keeps that layout; an EM-pretrained encoder brings no memory.
    # A joint decoder needs a shared memory, whatever the weights.
    sam2_memory = weights_source is not None and not is_encoder_folder(weights_source)
    layout = {"shared_memory": options.memory and (options.joint_decoder or not sam2_memory), "joint_detail": options.detail_head}
    unset = {option: value for option, value in layout.items() if getattr(options, option) is None}
    return replace(options, image_size=options.image_size or spec.image_size, finetune=finetune, **unset)


def _assemble(sam2: Sam2VideoModel, spec: ModelSpec, info: ModelInfo[BuildOptions], *, finetune: FineTune) -> SAM4EM:
    options = info.build_options
    dim = cast(Sam2VisionConfig, sam2.config.vision_config).fpn_hidden_size
    tokens = options.prompt_tokens or spec.prompt_tokens
    stage1 = sam2.mask_decoder
    stage2 = copy.deepcopy(stage1) if options.two_stage else None
    prompts: nn.Module
    if options.prompt_generator:
        prompts = PromptGenerator(num_classes=options.num_classes, num_tokens=tokens, dim=dim)
    else:
        prompts = StaticPrompts(num_classes=options.num_classes, num_tokens=tokens, dim=dim)
    model = SAM4EM(
        image_encoder=sam2.vision_encoder,
        prompt_encoder=sam2.prompt_encoder,
        image_position=sam2.shared_image_embedding,
        prompt_generator=prompts,
        stage1_decoder=stage1,
        stage2_decoder=stage2,
        enhancer=FeatureEnhancer(channels=dim) if options.enhancer else None,
        detail_head=DetailHead(classes=options.num_classes if options.joint_detail else 1) if options.detail_head else None,
        memory=_memory(sam2, options) if options.memory else None,
        info=info,
        joint_decoding=JointDecoding(num_classes=options.num_classes, dim=dim) if options.joint_decoder else None,
    )
    if finetune == "lora":
        add_lora(model.image_encoder, target_modules=ENCODER_TARGETS, rank=options.lora_rank, alpha=options.lora_alpha)
        if options.decoder_lora:
            for decoder in filter(None, (model.stage1_decoder, model.stage2_decoder)):
                add_lora(decoder, target_modules=DECODER_TARGETS, rank=options.lora_rank, alpha=options.lora_alpha)
    set_trainable(model, finetune=finetune, memory=False)
    return model


def _memory(sam2: Sam2VideoModel, options: BuildOptions) -> SliceMemory:
    """SAM2's memory encoder, memory attention and memory embeddings as the `SliceMemory` `options` ask for."""
    no_object = sam2.occlusion_spatial_embedding_parameter
    if no_object is None:  # every registered base enables it (Meta's SAM2.1 does)
        raise ValueError("the SAM2 config has no object-absent memory embedding (enable_occlusion_spatial_embedding)")
    return SliceMemory(
        memory_encoder=sam2.memory_encoder,
        memory_attention=sam2.memory_attention,
        temporal_encoding=sam2.memory_temporal_positional_encoding,
        no_memory_embedding=sam2.no_memory_embedding,
        no_object_embedding=no_object,
        capacity=options.memory_capacity,
        shared_classes=options.num_classes if options.shared_memory else 0,
        sigmoid_scale=sam2.config.sigmoid_scale_for_mem_enc,
        sigmoid_bias=sam2.config.sigmoid_bias_for_mem_enc,
    )
