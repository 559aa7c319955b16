"""Full-resolution detail head: the decoder's 1/4-resolution logits refined with the image itself.

SAM's mask decoder predicts at 1/4 of the input resolution and the logits are upsampled bilinearly;
membranes, synaptic clefts and the rims of small mitochondria are only a few pixels wide, so they
blur. A light convolutional stem on the full-resolution slice is fused with the upsampled logits and
adds a residual correction. The last layer is zero-initialised, so a pretrained SAM2 starts out
exactly as it was.

Per class (SAM4EM as published), the fuse runs once per class with that class's logits. Joint
(`BuildOptions.joint_detail`, the default), it runs once per window with every class's logits as channels and
returns a correction per class: with three classes its first convolution reads 11 full-resolution
channels once instead of 9 three times, and each class's refinement sees the others'. With one class
the two are the same head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DetailHead(nn.Module):
    """`stem(images (B, 1, S, S))` -> detail features (B, F, S, S), channels-last, computed once per slice;
    `forward(detail, low_res (B * C, 1, S/4, S/4))` -> logits (B * C, 1, S, S).

    `classes`: the logits one pass of the fuse takes and corrects: 1 (per class: the classes are folded
    into the batch) or C (joint). Eight channels keep the full-resolution convolutions cheap next to
    the image encoder.
    """

    def __init__(self, *, channels: int = 8, classes: int = 1) -> None:
        super().__init__()
        self.classes = classes
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.GroupNorm(2, channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(2, channels),
            nn.GELU(),
        )
        # Channels-last weights make oneDNN run the stem channels-last: on one input channel the input
        # cannot say (a (B, 1, S, S) tensor is both layouts), and in the default layout the convolutions
        # spent most of their time converting layouts (4.7-7.0 ms per 256-pixel window on the 2-core CPU,
        # 2.1-3.4 ms so; docs/benchmarks.md). Loading weights copies into these tensors and keeps it.
        self.stem.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted, not in the stubs
        fuse_out = nn.Conv2d(channels, classes, kernel_size=1)
        self.fuse = nn.Sequential(nn.Conv2d(channels + classes, channels, kernel_size=3, padding=1), nn.GELU(), fuse_out)
        for parameter in fuse_out.parameters():
            nn.init.zeros_(parameter)

    def forward(self, detail: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        up = F.interpolate(low_res.view(-1, self.classes, *low_res.shape[-2:]), size=size, mode="bilinear", align_corners=False)
        if up.shape[0] != detail.shape[0]:  # per class: the slice's detail for each of its classes
            detail = detail.repeat_interleave(up.shape[0] // detail.shape[0], dim=0)
        # Channels-last: with a few channels at full resolution, oneDNN's default-layout convolutions
        # spend most of their time converting layouts (the fuse took 46 ms per 256-pixel window with 3
        # classes on the 2-core CPU, 27 ms channels-last; docs/benchmarks.md). The same values within
        # float rounding (about 1e-6: the convolution sums in another order).
        fused = torch.cat([detail, up], dim=1).contiguous(memory_format=torch.channels_last)
        return (up + self.fuse(fused)).contiguous().view(-1, 1, *size)
