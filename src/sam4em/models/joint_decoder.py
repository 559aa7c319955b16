"""SAM2's mask decoder run once per window for every class, instead of once per class.

Per class (SAM2's layout, one object per decoder pass), each class folded into the batch has its own
pass: the two-way transformer over the image tokens, the upscaling to 1/4 resolution and the
high-resolution skips all run C times per window, on C copies of the same features. With
`BuildOptions.joint_decoder` they run once. One token sequence per window holds every class's tokens:

    [score_1 .. score_C, iou, mask_1 .. mask_C, prompts of class 1, .., prompts of class C]

Class c's object-score token and mask token are SAM2's own (the object-score token and single-mask
token 0) plus a learned class embedding, so a pretrained decoder starts from the tokens it knows;
SAM2's IoU token stays in the sequence as it was trained with. Class c's mask is its mask token's
hypernetwork output (SAM2's hypernetwork 0) times the one upscaled embedding. The C classes' dense
prompts (stage 1: the prompt generator's; stage 2: the embedded stage-1 masks) are mixed into the one
image embedding with learned per-class channel weights (1/C at first: their mean), as the shared
memory mixes the classes' masks (`sam4em.models.memory`). This needs one set of conditioned features
per window: a shared memory or none.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMaskDecoder

__all__ = ["JointDecoding"]


class JointDecoding(nn.Module):
    """The class embeddings and dense-prompt weights of joint decoding; `forward` decodes with a given SAM2 decoder."""

    def __init__(self, *, num_classes: int, dim: int) -> None:
        super().__init__()
        # Distinct from the start: identical class tokens would attend alike and never tell the classes apart.
        self.class_tokens = nn.Parameter(torch.randn(num_classes, dim) * 0.02)
        self.class_dense_weights = nn.Parameter(torch.full((num_classes, dim), 1.0 / num_classes))

    @property
    def num_classes(self) -> int:
        return self.class_tokens.shape[0]

    def forward(
        self,
        decoder: Sam2VideoMaskDecoder,
        *,
        image_embeddings: torch.Tensor,
        image_position: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_resolution: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of `decoder` per window for all classes.

        image_embeddings (W, D, h, w) and image_position (1, D, h, w): one per window; sparse (W * C, 1, T, D)
        and dense (W * C, D, h, w): per class, window-major as SAM4EM folds classes; high_resolution: the
        decoder's 1/4 and 1/8 skips (W, D/8, 4h, 4w), (W, D/4, 2h, 2w) -> mask logits (W * C, 1, 4h, 4w) and
        object-score logits (W * C, 1), in the same order.
        """
        c = self.num_classes
        windows, dim, h, w = image_embeddings.shape
        scores = decoder.obj_score_token.weight + self.class_tokens
        masks = decoder.mask_tokens.weight[:1] + self.class_tokens
        own = torch.cat([scores, decoder.iou_token.weight, masks]).expand(windows, 1, -1, -1)
        tokens = torch.cat([own, sparse.reshape(windows, 1, -1, dim)], dim=2)  # (W, 1, 2C + 1 + C * T, D)
        mixed = (dense.unflatten(0, (windows, c)) * self.class_dense_weights[None, :, :, None, None]).sum(dim=1)
        tokens, image = decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=image_embeddings + mixed,
            image_positional_embeddings=image_position.expand(windows, -1, -1, -1),
            attention_similarity=None,
        )
        # As SAM2's decoder: the image tokens back to a map, upscaled to 1/4 with the skips added.
        image = image.transpose(2, 3).reshape(windows, dim, h, w)
        fine, mid = high_resolution
        upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(image) + mid))
        upscaled = decoder.activation(decoder.upscale_conv2(upscaled) + fine)
        hyper = decoder.output_hypernetworks_mlps[0](tokens[:, 0, c + 1 : 2 * c + 1])  # (W, C, D/8)
        logits = hyper @ upscaled.flatten(2)  # (W, C, 16 h w)
        object_scores = decoder.pred_obj_score_head(tokens[:, 0, :c])  # (W, C, 1)
        return logits.reshape(windows * c, 1, *upscaled.shape[-2:]), object_scores.reshape(windows * c, 1)
