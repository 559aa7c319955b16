"""The SAM4EM module: SAM2 parts composed into a prompt-free, two-stage, slice-to-slice segmenter.

Every part is passed in (see `sam4em.models.compose` for how they are made), so the ablations are
the same class with a part left out: no enhancer, no second stage, no memory, or static prompts
instead of the prompt generator. Its identity (base, build options, class names) is the declared
`info` (`sam4em.models.info.ModelInfo`).

Axes: images are (B, 1, H, W) floats in [0, 1] (one EM slice per item, already intensity-normalised);
clips are (B, K, 1, H, W) with K consecutive slices in z order; logits are (B, C, H, W) per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMaskDecoder, Sam2VideoPromptEncoder

from sam4em.models.detail_head import DetailHead
from sam4em.models.enhancer import FeatureEnhancer
from sam4em.models.info import BuildOptions, ModelInfo, SegmentationModel
from sam4em.models.joint_decoder import JointDecoding
from sam4em.models.memory import MemoryBank, SliceMemory

# SAM2 normalises RGB inputs with ImageNet statistics; a gray EM slice is repeated over 3 channels.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageFeatures:
    """Encoder output for a batch of slices: levels (fine, mid, coarse) at strides 4, 8, 16, each
    (B, D, h, w), the coarse level's position encoding (B, D, h, w), and the detail head's
    full-resolution features (B, F, S, S) or None."""

    detail: torch.Tensor | None
    fine: torch.Tensor
    mid: torch.Tensor
    coarse: torch.Tensor
    position: torch.Tensor


@dataclass(frozen=True)
class SliceOutput:
    """Logits (B, C, H, W) of both stages; `stage2` is None for single-stage ablations.

    `low_res_stage1` (B * C, 1, H/4, W/4) is what stage 2 consumes as its mask prompt.
    `object_score` (B * C, 1) holds the final stage's object-score logits (SAM2's decoder head; > 0:
    the class is present in the slice), which decide what the memory remembers; None for models
    without SAM2's decoder.
    """

    stage1: torch.Tensor
    stage2: torch.Tensor | None
    low_res_stage1: torch.Tensor
    object_score: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        """The final prediction: stage 2 when present."""
        return self.stage2 if self.stage2 is not None else self.stage1


@dataclass(frozen=True)
class ClipOutput:
    """Logits (B, K, C, H, W) for every slice of a clip, both stages."""

    stage1: torch.Tensor
    stage2: torch.Tensor | None

    @property
    def logits(self) -> torch.Tensor:
        return self.stage2 if self.stage2 is not None else self.stage1


class SAM4EM(SegmentationModel):
    """Prompt-free SAM2 for EM: LoRA encoder, feature enhancer, prompt generator, two decoders, memory.

    `info` declares the model (its `num_classes` and `image_size` come from it).
    """

    info: ModelInfo[BuildOptions]
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: Sam2VideoPromptEncoder,
        image_position: nn.Module,
        prompt_generator: nn.Module,
        stage1_decoder: Sam2VideoMaskDecoder,
        stage2_decoder: Sam2VideoMaskDecoder | None,
        enhancer: FeatureEnhancer | None,
        memory: SliceMemory | None,
        info: ModelInfo[BuildOptions],
        detail_head: DetailHead | None = None,
        joint_decoding: JointDecoding | None = None,
    ) -> None:
        super().__init__(info=info)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.image_position = image_position
        self.prompt_generator = prompt_generator
        self.stage1_decoder = stage1_decoder
        self.stage2_decoder = stage2_decoder
        self.enhancer = enhancer
        self.memory = memory
        self.detail_head = detail_head
        self.joint_decoding = joint_decoding
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """images (B, 1, S, S), S = `image_size`, values in [0, 1] -> enhanced features."""
        if images.ndim != 4 or images.shape[1] != 1 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"expected images of shape (B, 1, {self.image_size}, {self.image_size}), got {tuple(images.shape)}"
            )
        pixels = (images.expand(-1, 3, -1, -1) - self.pixel_mean) / self.pixel_std
        out = self.image_encoder(pixels)
        fine, mid, coarse = out.fpn_hidden_states
        if self.enhancer is not None:
            fine, mid, coarse = self.enhancer(fine, mid, coarse)
        detail = self.detail_head.stem(images) if self.detail_head is not None else None
        return ImageFeatures(detail=detail, fine=fine, mid=mid, coarse=coarse, position=out.fpn_position_encoding[-1])

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, features: ImageFeatures, bank: MemoryBank | None = None) -> SliceOutput:
        """Both decoding stages for one batch of slices, conditioned on `bank` when given.

        Classes are folded into the batch (N = B * C, batch-major) so that each class has its own
        prompts and its own mask, exactly like SAM2 tracks several objects, and its own memory unless
        the memory is shared (then the features are conditioned once per slice, before the folding).
        With `joint_decoding` each decoder stage then runs once per slice for all classes.
        """
        coarse, position = self._conditioned(features, bank)
        sparse, dense = self.prompt_generator(coarse, position)
        dense = dense + self.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)
        decoder_position = self._decoder_position(coarse)
        low1, score = self._run_decoder(self.stage1_decoder, features, coarse, sparse, dense, decoder_position)
        low2 = None
        if self.stage2_decoder is not None:
            low2, score = self.refine(features, coarse, sparse, low1, decoder_position=decoder_position)
        # The detail head refines the final stage only: stage 2 is the refinement step.
        stage1 = self._to_image(low1, features.detail if low2 is None else None)
        stage2 = self._to_image(low2, features.detail) if low2 is not None else None
        return SliceOutput(stage1=stage1, stage2=stage2, low_res_stage1=low1, object_score=score)

    def _conditioned(self, features: ImageFeatures, bank: MemoryBank | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse features conditioned on `bank` and their position encoding, folded per class (N, D, h, w)."""
        coarse, position = features.coarse, features.position
        memory, c = self.memory, self.num_classes
        if memory is None:
            return coarse.repeat_interleave(c, dim=0), position.repeat_interleave(c, dim=0)
        # Without a bank this is a first slice: SAM2's "no memory" embedding, as at inference.
        bank = bank if bank is not None else memory.new_bank()
        if memory.shared_classes:  # once per window, before the folding
            coarse = memory.condition(coarse, position, bank)
        coarse, position = coarse.repeat_interleave(c, dim=0), position.repeat_interleave(c, dim=0)
        if not memory.shared_classes:  # SAM2's: once per window and class
            coarse = memory.condition(coarse, position, bank)
        return coarse, position

    def refine(
        self,
        features: ImageFeatures,
        coarse: torch.Tensor,
        sparse: torch.Tensor,
        stage1_low_res: torch.Tensor,
        *,
        decoder_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: the stage-1 logits (N, 1, H/4, W/4) become SAM's dense mask prompt -> logits
        (N, 1, H/4, W/4) and object-score logits (N, 1)."""
        if self.stage2_decoder is None:
            raise RuntimeError("this model has no second stage")
        dense = self.prompt_encoder.mask_embed(stage1_low_res)
        if decoder_position is None:
            decoder_position = self._decoder_position(coarse)
        return self._run_decoder(self.stage2_decoder, features, coarse, sparse, dense, decoder_position)

    def _run_decoder(
        self,
        decoder: Sam2VideoMaskDecoder,
        features: ImageFeatures,
        coarse: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        decoder_position: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM2's single-mask decoding -> logits (N, 1, H/4, W/4) and object-score logits (N, 1).

        With the model's `multimask_fallback`, the decoder (in eval mode) swaps an unstable token-0
        mask for its most confident multimask output, as Meta's predictors do. With `joint_decoding`,
        one pass per window decodes every class (the C rows of a window's `coarse` are the same)."""
        c = self.num_classes
        n = coarse.shape[0]
        skips = decoder.conv_s0(features.fine), decoder.conv_s1(features.mid)
        if self.joint_decoding is not None:
            return self.joint_decoding(
                decoder, image_embeddings=coarse[::c], image_position=decoder_position, sparse=sparse, dense=dense,
                high_resolution=skips,
            )
        high_res = [skip.repeat_interleave(c, dim=0) for skip in skips]
        masks, _, _, object_scores = decoder(
            image_embeddings=coarse,
            image_positional_embeddings=decoder_position.expand(n, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=high_res,
        )
        return masks[:, 0], object_scores.reshape(n, 1)  # (N, 1, H/4, W/4), (N, 1)

    def _decoder_position(self, coarse: torch.Tensor) -> torch.Tensor:
        h, w = coarse.shape[-2:]
        grid = torch.ones((h, w), device=coarse.device, dtype=coarse.dtype)
        y = (grid.cumsum(0) - 0.5) / h
        x = (grid.cumsum(1) - 0.5) / w
        return self.image_position(torch.stack([x, y], dim=-1)).permute(2, 0, 1)[None]

    def _to_image(self, low_res: torch.Tensor, detail: torch.Tensor | None) -> torch.Tensor:
        """(B * C, 1, h, w) -> (B, C, S, S), refined by the detail head when `detail` is given."""
        if self.detail_head is not None and detail is not None:
            full = self.detail_head(detail, low_res)
        else:
            full = F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return full.view(-1, self.num_classes, self.image_size, self.image_size)

    # -- memory --------------------------------------------------------------------------------
    @property
    def memory_capacity(self) -> int:
        """The slices its memory holds (`BuildOptions.memory_capacity`); 0 for an ablation without memory."""
        return self.memory.capacity if self.memory is not None else 0

    def new_memory_bank(self) -> MemoryBank | None:
        """An empty bank for a new volume (None for models without memory)."""
        return self.memory.new_bank() if self.memory is not None else None

    def remember(self, features: ImageFeatures, output: SliceOutput, bank: MemoryBank | None) -> None:
        """Encode this slice's features, final prediction and object scores into `bank`."""
        if self.memory is None or bank is None:
            return
        if output.object_score is None:
            raise ValueError("remember() needs the object scores that SAM4EM's own decode() returns")
        coarse = features.coarse
        if not self.memory.shared_classes:
            coarse = coarse.repeat_interleave(self.num_classes, dim=0)
        logits = output.logits.reshape(-1, 1, self.image_size, self.image_size)
        bank.push(self.memory.encode(coarse, logits, output.object_score))

    # -- whole passes --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, bank: MemoryBank | None = None) -> SliceOutput:
        """One batch of slices (B, 1, S, S); when `bank` is given, it is read and then extended."""
        features = self.encode(images)
        output = self.decode(features, bank)
        self.remember(features, output, bank)
        return output

    def forward_clip(self, clip: torch.Tensor) -> ClipOutput:
        """A clip (B, K, 1, S, S) in z order, from an empty memory -> logits (B, K, C, S, S)."""
        bank = self.new_memory_bank()
        stage1, stage2 = [], []
        for k in range(clip.shape[1]):
            out = self(clip[:, k], bank)
            stage1.append(out.stage1)
            if out.stage2 is not None:
                stage2.append(out.stage2)
        return ClipOutput(
            stage1=torch.stack(stage1, dim=1),
            stage2=torch.stack(stage2, dim=1) if stage2 else None,
        )
