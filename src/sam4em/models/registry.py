"""Model registry: named SAM2 bases and `build_model`, which composes a SAM4EM from them.

Names:
- ``sam2.1-hiera-{tiny,small,base-plus,large}``: Meta's SAM2.1 architectures; pretrained weights from
  the Hugging Face hub (``facebook/sam2.1-hiera-*``) or its local cache, a local directory in that
  format, or Meta's original ``sam2.1_hiera_*.pt`` file. Fine-tuned with LoRA (encoder frozen).
- ``cpu-small``: a reduced Hiera sized for training from scratch on a CPU. Fully trained.
- ``test-tiny``: under 1 M parameters, for unit tests. Fully trained.
- a ``sam4em pretrain`` run folder: its base's architecture with the EM-pretrained image encoder,
  fine-tuned with LoRA as Meta's weights are (see `sam4em.models.encoder_weights`).

Random weights are seeded from the model name, so one name means one model in every process.
"""

from __future__ import annotations

import copy
import os
import re
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import Sam2VideoConfig, Sam2VideoModel

from sam4em.models.checkpoint_files import CheckpointError, read_safetensors, read_torch_weights
from sam4em.models.checkpoint_keys import meta_to_transformers
from sam4em.models.detail_head import DetailHead
from sam4em.models.encoder_weights import ENCODER_FILE, is_encoder_folder, read_pretrain_record
from sam4em.models.enhancer import FeatureEnhancer
from sam4em.models.lora import DECODER_TARGETS, ENCODER_TARGETS, add_lora, is_lora_parameter
from sam4em.models.memory import SliceMemory
from sam4em.models.prompt_generator import PromptGenerator, StaticPrompts
from sam4em.models.sam4em import SAM4EM

FineTune = Literal["lora", "full"]


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
        ),
    )
}


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the base that decides the architecture; saved with every trained model."""

    num_classes: int = 1
    image_size: int | None = None
    finetune: FineTune | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    decoder_lora: bool = True
    memory_capacity: int = 6
    prompt_tokens: int | None = None
    enhancer: bool = True
    detail_head: bool = True
    prompt_generator: bool = True
    two_stage: bool = True
    memory: bool = True
    # Meta's `dynamic_multimask_via_stability` (eval mode only): an unstable single mask is replaced by
    # the most confident of the decoder's three multimask outputs. Off: SAM4EM always uses token 0.
    multimask_fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_models() -> list[str]:
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())} or give a path") from None


def base_spec(base: str) -> ModelSpec:
    """The architecture of a base: a registry name or a `sam4em pretrain` run folder."""
    if is_encoder_folder(base):
        return get_spec(read_pretrain_record(base)["base"])
    return get_spec(base)


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


def build_model(
    name_or_path: str | Path,
    num_classes: int = 1,
    pretrained: bool = True,
    **overrides: Any,
) -> SAM4EM:
    """Build a SAM4EM for `num_classes` classes on a named base, a trained run folder, a Hugging Face
    style SAM2 folder or Meta's ``sam2.1_hiera_*.pt`` file.

    `overrides` are `BuildOptions` fields (image_size, lora_rank, memory_capacity, enhancer, ...).
    `pretrained=False` gives the same architecture with random weights seeded from the name.
    """
    unknown = set(overrides) - set(BuildOptions.__dataclass_fields__) - {"base"}
    if unknown:
        raise TypeError(f"unknown build option(s): {', '.join(sorted(unknown))}")
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.yaml").exists() and not is_encoder_folder(path):
        from sam4em.models.serialization import load_model

        return load_model(path)
    options = BuildOptions(num_classes=num_classes, **{k: v for k, v in overrides.items() if k != "base"})
    if str(name_or_path) in MODELS:
        spec = get_spec(str(name_or_path))
        source: str | Path | None = spec.hub_id if pretrained else None
    elif is_encoder_folder(path):
        # A `sam4em pretrain` run: its encoder is what the folder is for, so it is always loaded.
        spec = base_spec(str(path))
        source = path.resolve()
    elif path.exists():
        spec = get_spec(overrides.get("base") or _base_from_path(path))
        source = path if pretrained else None
    else:
        spec = get_spec(str(name_or_path))  # raises the unknown-name error
        source = None
    return compose(spec, options, weights_source=source)


_META_FILE = re.compile(r"sam2\.1[-_]hiera[-_](tiny|small|base[-_]plus|large|t|s|b\+|l)\.pt$")
_META_SHORT = {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}


def _base_from_path(path: Path) -> str:
    if match := _META_FILE.match(path.name.lower()):
        size = match.group(1).replace("_", "-")
        return f"sam2.1-hiera-{_META_SHORT.get(size, size)}"
    if (path / "config.json").exists():
        backbone = Sam2VideoConfig.from_pretrained(path).vision_config.backbone_config
        for spec in MODELS.values():
            if spec.has_pretrained_weights and spec.backbone["blocks_per_stage"] == list(backbone.blocks_per_stage):
                return spec.name
    raise ValueError(f"{path}: cannot tell which SAM2 architecture this is; pass base='sam2.1-hiera-tiny' (or another name)")


def compose(spec: ModelSpec, options: BuildOptions, *, weights_source: str | Path | None = None) -> SAM4EM:
    """Make the SAM2 parts of `spec`, load pretrained weights from `weights_source`, compose a SAM4EM."""
    image_size = options.image_size or spec.image_size
    # Pretrained weights (Meta's or an EM-pretrained encoder) are fine-tuned with LoRA unless told otherwise.
    finetune = options.finetune or ("lora" if weights_source is not None else spec.finetune)
    config = sam2_config(
        spec, image_size=image_size, memory_capacity=options.memory_capacity,
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
        model = _assemble(sam2, spec, options, image_size=image_size, finetune=finetune)
    model.spec_name = spec.name
    model.build_options = replace(options, image_size=image_size, finetune=finetune)
    model.pretrained_base = weights_source is not None
    model.weights_source = str(weights_source) if weights_source is not None else None
    return model


def _assemble(sam2: Sam2VideoModel, spec: ModelSpec, options: BuildOptions, *, image_size: int, finetune: FineTune) -> SAM4EM:
    dim = sam2.config.vision_config.fpn_hidden_size
    tokens = options.prompt_tokens or spec.prompt_tokens
    stage1 = sam2.mask_decoder
    stage2 = copy.deepcopy(stage1) if options.two_stage else None
    prompts: nn.Module
    if options.prompt_generator:
        prompts = PromptGenerator(num_classes=options.num_classes, num_tokens=tokens, dim=dim)
    else:
        prompts = StaticPrompts(num_classes=options.num_classes, num_tokens=tokens, dim=dim)
    memory = None
    if options.memory:
        memory = SliceMemory(
            memory_encoder=sam2.memory_encoder,
            memory_attention=sam2.memory_attention,
            temporal_encoding=sam2.memory_temporal_positional_encoding,
            no_memory_embedding=sam2.no_memory_embedding,
            no_object_embedding=sam2.occlusion_spatial_embedding_parameter,
            capacity=options.memory_capacity,
            sigmoid_scale=sam2.config.sigmoid_scale_for_mem_enc,
            sigmoid_bias=sam2.config.sigmoid_bias_for_mem_enc,
        )
    model = SAM4EM(
        image_encoder=sam2.vision_encoder,
        prompt_encoder=sam2.prompt_encoder,
        image_position=sam2.shared_image_embedding,
        prompt_generator=prompts,
        stage1_decoder=stage1,
        stage2_decoder=stage2,
        enhancer=FeatureEnhancer(channels=dim) if options.enhancer else None,
        detail_head=DetailHead() if options.detail_head else None,
        memory=memory,
        num_classes=options.num_classes,
        image_size=image_size,
    )
    if finetune == "lora":
        add_lora(model.image_encoder, target_modules=ENCODER_TARGETS, rank=options.lora_rank, alpha=options.lora_alpha)
        if options.decoder_lora:
            for decoder in filter(None, (model.stage1_decoder, model.stage2_decoder)):
                add_lora(decoder, target_modules=DECODER_TARGETS, rank=options.lora_rank, alpha=options.lora_alpha)
    set_trainable(model, finetune=finetune, memory=False)
    return model


def is_adapter_parameter(name: str) -> bool:
    """Parameters that LoRA fine-tuning trains besides LoRA itself: the enhancer, the detail head, the prompt generator,
    SAM's mask-prompt embedding (stage 2 reads stage-1 logits through it) and the decoders' output
    heads (everything of a decoder outside its two-way transformer)."""
    if _UNUSED.match(name):
        return False
    if name.startswith(("enhancer.", "detail_head.", "prompt_generator.", "prompt_encoder.mask_embed.")):
        return True
    return name.startswith(("stage1_decoder.", "stage2_decoder.")) and ".transformer." not in name


# SAM2 parts that prompt-free training never trains, frozen in every mode so that optimisers do not
# carry dead weights: point prompts; the IoU head and multimask hypernetworks (read only in eval mode,
# by the optional multimask fallback); the object-score head (only its sign is read, to mark classes
# absent in memory, and a sign has no gradient).
_UNUSED = re.compile(
    r"^prompt_encoder\.(point_embed|not_a_point_embed|shared_embedding)\."
    r"|^stage[12]_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.[1-9])\."
)


def set_trainable(model: SAM4EM, *, finetune: FineTune, memory: bool) -> None:
    """`full`: everything but the memory trains. `lora`: LoRA and adapter parameters train, SAM2's own
    weights stay frozen. `memory=True` also trains the memory encoder and memory attention (the 3D
    stage); in the 2D stage they have nothing to learn from."""
    for name, parameter in model.named_parameters():
        if _UNUSED.match(name):
            parameter.requires_grad_(False)
        elif name.startswith("memory."):
            parameter.requires_grad_(memory)
        elif finetune == "full":
            parameter.requires_grad_(True)
        else:
            trainable = is_lora_parameter(name) or is_adapter_parameter(name)
            parameter.requires_grad_(trainable)


def load_sam2_weights(sam2: Sam2VideoModel, source: str | Path) -> None:
    """Load pretrained SAM2 weights strictly into `sam2` (built at any image size).

    `source`: a Meta ``.pt`` file, a Hugging Face style folder, a hub id (local cache first), or a
    `sam4em pretrain` run folder (its image encoder only; the other parts keep their initialisation).
    """
    path = Path(source)
    if is_encoder_folder(path):
        # read_safetensors: a truncated or corrupt encoder file is one line naming it, not a traceback.
        load_state_strict(sam2.vision_encoder, read_safetensors(path / ENCODER_FILE), source=str(path / ENCODER_FILE))
        return
    if path.is_file():  # a file is never a hub id: Meta's .pt, or refused in one line
        raw = read_torch_weights(path)
        state = meta_to_transformers(raw.get("model", raw))
    else:
        state = _hub_state_dict(str(source))
    load_state_strict(sam2, state, source=str(source))


def _hub_state_dict(source: str) -> dict[str, torch.Tensor]:
    try:
        pretrained = Sam2VideoModel.from_pretrained(source, local_files_only=True)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
            raise CheckpointError(
                f"{source}: pretrained SAM2 weights are not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download them where there is internet, pass a local folder or Meta .pt file, or use pretrained=False"
            ) from None
        try:
            pretrained = Sam2VideoModel.from_pretrained(source)
        except OSError as error:
            raise CheckpointError(
                f"{source}: pretrained SAM2 weights are not in the Hugging Face cache and the hub cannot be "
                f"reached ({str(error).splitlines()[0]}); download them where there is internet, pass a local "
                "folder or Meta .pt file, or use pretrained=False for random weights"
            ) from None
    return pretrained.state_dict()


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, subset: bool = False) -> None:
    """Load `state` into `module`, refusing any missing, unexpected or mis-shaped tensor.

    With `subset=True` the checkpoint may hold only part of the module (adapter-only checkpoints);
    unexpected and mis-shaped tensors are still refused.
    """
    expected = module.state_dict()
    missing = [] if subset else sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched shape", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the architecture; " + "; ".join(problems))
    module.load_state_dict(state, strict=not subset)
