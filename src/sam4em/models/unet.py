"""Baseline U-Nets from MONAI, wrapped to speak the same interface as SAM4EM.

`UNet2D` segments slice by slice (no memory), so every inference path that runs SAM4EM runs it
too. `UNet3D` sees clips of K slices; it predicts whole volumes by MONAI's sliding-window inference.
Both declare themselves in `info` (base ``unet2d`` / ``unet3d``, `BaselineOptions`, class names).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from sam4em.models.info import BaselineOptions, ModelInfo, SegmentationModel, class_names_tuple
from sam4em.models.sam4em import ClipOutput, SliceOutput

CHANNELS = (16, 32, 64, 128, 256)


class UNet2D(SegmentationModel):
    """MONAI 2D U-Net (channels 16-256, 2 residual units): (B, 1, S, S) -> logits (B, C, S, S)."""

    info: ModelInfo[BaselineOptions]

    def __init__(
        self, *, num_classes: int, image_size: int, class_names: Sequence[str] = (), channels: tuple[int, ...] = CHANNELS
    ) -> None:
        options = BaselineOptions(num_classes=num_classes, image_size=image_size)
        super().__init__(info=ModelInfo(base="unet2d", build_options=options, class_names=class_names_tuple(class_names)))
        self.net = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=num_classes,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=2,
        )

    def forward(self, images: torch.Tensor, bank: None = None) -> SliceOutput:
        logits = self.net(images)
        return SliceOutput(stage1=logits, stage2=None, low_res_stage1=logits)

    def forward_clip(self, clip: torch.Tensor) -> ClipOutput:
        b, k = clip.shape[:2]
        logits = self.net(clip.flatten(0, 1)).unflatten(0, (b, k))
        return ClipOutput(stage1=logits, stage2=None)


class UNet3D(SegmentationModel):
    """MONAI 3D U-Net with in-plane-only downsampling in the first level (EM is anisotropic).

    Clips (B, K, 1, S, S) -> logits (B, K, C, S, S); the K it is built for is `info.clip_length`.
    """

    info: ModelInfo[BaselineOptions]

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: int,
        clip_length: int = 8,
        class_names: Sequence[str] = (),
        channels: tuple[int, ...] = CHANNELS,
    ) -> None:
        options = BaselineOptions(num_classes=num_classes, image_size=image_size, clip_length=clip_length)
        super().__init__(info=ModelInfo(base="unet3d", build_options=options, class_names=class_names_tuple(class_names)))
        # z is halved only while the clip length stays even (so that up-sampling restores it exactly);
        # the remaining levels pool in-plane only.
        z_downs = 0
        while clip_length % 2 ** (z_downs + 1) == 0:
            z_downs += 1
        strides = [(2 if i < z_downs else 1, 2, 2) for i in range(len(channels) - 1)]
        self.net = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=num_classes,
            channels=channels,
            # MONAI's annotation says Sequence[int]; its convolutions also take one stride per axis.
            strides=strides,
            num_res_units=2,
        )

    def forward_clip(self, clip: torch.Tensor) -> ClipOutput:
        volume = clip.permute(0, 2, 1, 3, 4)  # (B, 1, K, S, S)
        logits = self.net(volume).permute(0, 2, 1, 3, 4)
        return ClipOutput(stage1=logits, stage2=None)

    @torch.inference_mode()
    def predict_volume(self, normalized: np.ndarray, *, batch_size: int = 2, overlap: float = 0.25) -> np.ndarray:
        """Sliding-window prediction of a normalised (Z, Y, X) volume -> probabilities (C, Z, Y, X)."""
        self.eval()
        device = next(self.parameters()).device
        volume = torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32))[None, None].to(device)
        clip_length = self.info.clip_length
        assert clip_length is not None  # a UNet3D is always built with one
        roi = (min(clip_length, volume.shape[2]), self.image_size, self.image_size)
        logits = sliding_window_inference(
            volume, roi, batch_size, lambda x: self.net(x), overlap=overlap, mode="gaussian", padding_mode="reflect"
        )
        return torch.sigmoid(logits[0].float()).cpu().numpy()
