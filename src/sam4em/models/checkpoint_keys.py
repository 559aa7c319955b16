"""Key mapping between Meta's original SAM2 checkpoints and the transformers layout.

Meta's files (``sam2.1_hiera_{t,s,b+,l}.pt``) hold ``{"model": state_dict}`` with names such as
``image_encoder.trunk.blocks.0.attn.qkv.weight``; transformers' ``Sam2VideoModel`` names the same
tensor ``vision_encoder.backbone.blocks.0.attn.qkv.weight``. The rules below are written in both
directions so that a round trip is exact and testable without the real files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (meta pattern, transformers replacement), applied in order to each Meta key.
_META_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    # Three-layer MLPs: layers.0 / layers.1 / layers.2 -> proj_in / layers.0 / proj_out.
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^obj_ptr_proj)\.layers\.0\.",
     r"\1.proj_in."),
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^obj_ptr_proj)\.layers\.2\.",
     r"\1.proj_out."),
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^obj_ptr_proj)\.layers\.1\.",
     r"\1.layers.0."),
    # Two-layer MLPs (Hiera blocks, decoder transformer).
    (r"\.mlp\.layers\.0\.", ".mlp.proj_in."),
    (r"\.mlp\.layers\.1\.", ".mlp.proj_out."),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.", "memory_encoder.mask_downsampler.encoder.@\\1."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"\.dwconv\.", ".depthwise_conv."),
    (r"\.pwconv(\d)\.", r".pointwise_conv\1."),
    (r"\.gamma$", ".scale"),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.norm(\d*)\.", r".layer_norm\1."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
)

_HF_TO_META: tuple[tuple[str, str], ...] = (
    (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$",
     "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "sam_prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "sam_prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "sam_prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "sam_prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "sam_prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^mask_decoder\.upscale_conv1\.", "sam_mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "sam_mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "sam_mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^object_pointer_proj)\.layers\.0\.",
     r"\1.layers.1."),
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^object_pointer_proj)\.proj_in\.",
     r"\1.layers.0."),
    (r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|^object_pointer_proj)\.proj_out\.",
     r"\1.layers.2."),
    (r"\.mlp\.proj_in\.", ".mlp.layers.0."),
    (r"\.mlp\.proj_out\.", ".mlp.layers.1."),
    (r"^object_pointer_proj\.", "obj_ptr_proj."),
    (r"^temporal_positional_encoding_projection_layer\.", "obj_ptr_tpos_proj."),
    (r"^occlusion_spatial_embedding_parameter$", "no_obj_embed_spatial"),
    (r"^no_object_pointer$", "no_obj_ptr"),
    (r"^memory_temporal_positional_encoding$", "maskmem_tpos_enc"),
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"^no_memory_positional_encoding$", "no_mem_pos_enc"),
    (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
    (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
    (r"^memory_encoder\.memory_fuser\.", "memory_encoder.fuser."),
    (r"\.depthwise_conv\.", ".dwconv."),
    (r"\.pointwise_conv(\d)\.", r".pwconv\1."),
    (r"\.scale$", ".gamma"),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
    (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
    (r"\.layer_norm(\d*)\.", r".norm\1."),
)

# Meta's mask downsampler is one nn.Sequential of [conv, norm, GELU] * n + final 1x1 conv.
_DOWNSAMPLER_META = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.@(\d+)\.")
_DOWNSAMPLER_HF = re.compile(r"^memory_encoder\.mask_downsampler\.(layers\.(\d+)\.(conv|layer_norm)|final_conv)\.")


def _rewrite(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def meta_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Meta SAM2 state dict to the `transformers.Sam2VideoModel` layout.

    Shapes are unchanged except the prompt encoder's four point embeddings, which transformers keeps
    in one (4, hidden) table, and the random-Fourier positional matrix, which transformers keeps twice.
    """
    num_down = 1 + max(
        (int(m.group(1)) for k in state_dict if (m := re.match(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.", k))),
        default=-1,
    )
    out: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := re.match(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$", key):
            points[int(m.group(1))] = value
            continue
        new = _rewrite(key, _META_TO_HF)
        if m := _DOWNSAMPLER_META.match(new):
            index = int(m.group(1))
            if index == num_down - 1:
                part = "final_conv"
            else:
                part = f"layers.{index // 3}.{'conv' if index % 3 == 0 else 'layer_norm'}"
            new = _DOWNSAMPLER_META.sub(f"memory_encoder.mask_downsampler.{part}.", new)
        out[new] = value
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    if "prompt_encoder.shared_embedding.positional_embedding" in out:
        out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def transformers_to_meta(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `meta_to_transformers`: export a `Sam2VideoModel` state dict in Meta's layout."""
    num_layers = 1 + max(
        (int(m.group(2)) for k in state_dict if (m := _DOWNSAMPLER_HF.match(k)) and m.group(2) is not None),
        default=-1,
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "shared_image_embedding.positional_embedding":
            continue  # a copy of the prompt encoder's matrix; Meta keeps it once
        if key == "prompt_encoder.point_embed.weight":
            for i, row in enumerate(value):
                out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = row[None].clone()
            continue
        if m := _DOWNSAMPLER_HF.match(key):
            if m.group(1) == "final_conv":
                index = 3 * num_layers
            else:
                index = 3 * int(m.group(2)) + (0 if m.group(3) == "conv" else 1)
            key = _DOWNSAMPLER_HF.sub(f"memory_encoder.mask_downsampler.encoder.{index}.", key)
            out[key] = value
            continue
        out[_rewrite(key, _HF_TO_META)] = value
    return out
