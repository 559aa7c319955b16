"""Feature enhancer: fuses SAM2's 1/4, 1/8 and 1/16 neck levels.

EM structures (synaptic clefts, thin glial processes, small mitochondria) are a few pixels wide, so
the coarse 1/16 embedding that SAM's mask decoder attends over misses them. The enhancer lets each
level see the others: the 1/16 embedding receives pooled fine detail, and the 1/8 and 1/4 maps that
the decoder uses for upscaling receive the coarse context. Every branch is residual with a
zero-initialised output, so at initialisation the enhancer is the identity and a pretrained decoder
sees exactly the features it was trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _FusionBlock(nn.Module):
    """Concatenated levels -> 1x1 reduce -> norm -> GELU -> depthwise 3x3 -> 1x1 (zero-init)."""

    def __init__(self, *, in_channels: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.norm = nn.GroupNorm(num_groups=_groups(hidden), num_channels=hidden)
        self.spatial = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.out = nn.Conv2d(hidden, channels, kernel_size=1)
        for parameter in self.out.parameters():
            nn.init.zeros_(parameter)

    def forward(self, levels: list[torch.Tensor], coarser: torch.Tensor | None = None) -> torch.Tensor:
        """The block on the concatenation of `levels` (each (N, D, H, W)) and, last, `coarser` upsampled
        bilinearly to (H, W).

        Nothing is concatenated: a 1x1 convolution of a concatenation is the sum of its parts' 1x1
        convolutions, and it commutes with bilinear upsampling (a per-channel weighted mean), so the
        coarser level is reduced at its own resolution, a quarter of the pixels, before upsampling.
        """
        weights = self.reduce.weight.split(levels[0].shape[1], dim=1)
        x = F.conv2d(levels[0], weights[0], self.reduce.bias)
        for level, weight in zip(levels[1:], weights[1 : len(levels)], strict=True):
            x = x + F.conv2d(level, weight)
        if coarser is not None:
            x = x + F.interpolate(F.conv2d(coarser, weights[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.gelu(self.spatial(F.gelu(self.norm(x)))))


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class FeatureEnhancer(nn.Module):
    """Cross-level fusion of the three neck levels, each keeping its shape.

    Inputs and outputs: ``(fine, mid, coarse)`` of shapes (N, D, 4h, 4w), (N, D, 2h, 2w), (N, D, h, w),
    the strides 4, 8 and 16 of the input image.
    """

    def __init__(self, *, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(channels // 2, 8)
        self.coarse = _FusionBlock(in_channels=3 * channels, channels=channels, hidden=hidden)
        self.mid = _FusionBlock(in_channels=3 * channels, channels=channels, hidden=hidden)
        self.fine = _FusionBlock(in_channels=2 * channels, channels=channels, hidden=hidden)

    def forward(
        self, fine: torch.Tensor, mid: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Coarse from pooled fine and mid, then mid from pooled fine and the new coarse, then fine from the
        # new mid. Pooling by 4 is pooling by 2 twice (equal-sized groups), so fine is read once for both.
        fine_at_mid = F.avg_pool2d(fine, 2)
        coarse = coarse + self.coarse([F.avg_pool2d(fine_at_mid, 2), F.avg_pool2d(mid, 2), coarse])
        mid = mid + self.mid([fine_at_mid, mid], coarser=coarse)
        fine = fine + self.fine([fine], coarser=mid)
        return fine, mid, coarse
