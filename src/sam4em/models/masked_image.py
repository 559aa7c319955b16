"""Masked image modelling on SAM2's image encoder (SimMIM-style), for `sam4em pretrain`.

The encoder is transformers' `Sam2VisionModel` (Hiera + FPN neck), unchanged: a forward hook on its
patch embedding replaces the stride-4 tokens of masked units by a learned mask token, so masking
happens where SimMIM puts it and the encoder runs its own forward. A light decoder (3x3 conv, GELU,
1x1 conv to 16*16 values, pixel shuffle) reconstructs the slice from the stride-16 FPN level, the
level SAM's mask decoder reads; it is thrown away after pretraining.

Why from the stride-16 level: SAM2's FPN adds top-down features only to its two coarsest levels, so
the stride-4 level is one Hiera block away from the pixels and cannot see past a masked unit; a head
there learns little (a first probe from it scored the mean predictor's loss).

Axes: images (B, 1, S, S) in [0, 1]; masks (B, S/u, S/u) bool, True = hidden, u = `mask_unit`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import Sam2HieraDetConfig, Sam2VideoModel, Sam2VisionModel

from sam4em.models.compose import sam2_config, seed_for
from sam4em.models.registry import get_spec
from sam4em.models.sam4em import PIXEL_MEAN, PIXEL_STD
from sam4em.models.weights import load_sam2_weights

DECODER_STRIDE = 16  # the FPN level decoded: stride 16 of Hiera's four stages
PATCH_STRIDE = 4  # Hiera's patch embedding


class MaskedImageModel(nn.Module):
    """SAM2 image encoder + mask token + throwaway pixel decoder."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, *, encoder: Sam2VisionModel, mask_unit: int = 16) -> None:
        super().__init__()
        if mask_unit % PATCH_STRIDE:
            raise ValueError(f"mask_unit must be a multiple of the patch stride {PATCH_STRIDE}, got {mask_unit}")
        self.encoder = encoder
        self.mask_unit = mask_unit
        config = encoder.config
        embed_dim = cast(Sam2HieraDetConfig, config.backbone_config).hidden_size
        channels = config.fpn_hidden_size
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, DECODER_STRIDE**2, 1),
            nn.PixelShuffle(DECODER_STRIDE),
        )
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        """The side S of the (S, S) slices its encoder is built for."""
        size = cast(Sam2HieraDetConfig, self.encoder.config.backbone_config).image_size
        assert isinstance(size, list)  # [S, S], as `sam2_config` sets it
        return int(size[0])

    def random_masks(self, batch: int, size: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S/u, S/u) bool masks hiding exactly round(ratio * units) units per image."""
        if size % self.mask_unit:
            raise ValueError(f"image size {size} is not a multiple of mask_unit {self.mask_unit}")
        units = (size // self.mask_unit) ** 2
        hidden = max(1, round(ratio * units))
        order = torch.rand(batch, units, generator=generator).argsort(dim=1)
        return (order < hidden).reshape(batch, size // self.mask_unit, size // self.mask_unit)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images (B, 1, S, S), masks (B, S/u, S/u) -> reconstruction (B, 1, S, S) in the decoder's units."""
        repeat = self.mask_unit // PATCH_STRIDE
        token_mask = masks.repeat_interleave(repeat, 1).repeat_interleave(repeat, 2)[..., None]

        def hide(module: nn.Module, inputs: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
            # tokens (B, S/4, S/4, C), channels last as Hiera keeps them
            return torch.where(token_mask, self.mask_token.to(tokens.dtype), tokens)

        pixels = (images.expand(-1, 3, -1, -1) - self.pixel_mean) / self.pixel_std
        # Hidden pixels are blanked too: the 7x7 patch kernel (stride 4) would leak them into visible tokens.
        pixel_mask = masks.repeat_interleave(self.mask_unit, 1).repeat_interleave(self.mask_unit, 2)[:, None]
        pixels = pixels.masked_fill(pixel_mask, 0.0)
        handle = self.encoder.backbone.patch_embed.register_forward_hook(hide)
        try:
            coarse = self.encoder(pixels).fpn_hidden_states[-1]
        finally:
            handle.remove()
        return self.decoder(coarse)


def build_masked_image_model(base: str, *, pretrained: bool, image_size: int | None = None, mask_unit: int = 16) -> MaskedImageModel:
    """A `MaskedImageModel` on the image encoder of registry base `base` (seeded random weights, or
    Meta's SAM2.1 weights with `pretrained=True`, loaded strictly as `build_model` does)."""
    spec = get_spec(base)
    source = spec.hub_id if pretrained else None
    if pretrained and source is None:
        raise ValueError(f"{base} has no pretrained weights; drop --pretrained or choose a sam2.1-hiera-* base")
    size = image_size or spec.image_size
    config = sam2_config(spec, image_size=size, memory_capacity=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(spec.name))
        sam2 = Sam2VideoModel(config)
        if source is not None:
            load_sam2_weights(sam2, source)
        return MaskedImageModel(encoder=sam2.vision_encoder, mask_unit=mask_unit)
