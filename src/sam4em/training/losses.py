"""Segmentation losses over per-class sigmoid logits, with a validity mask.

Every term is computed per item (image or clip slice) and per class, then averaged over items, so the
loss of a batch is the mean of the losses of its parts: gradient accumulation and data-parallel
training over equal shares give the same loss as one big batch. Dice carries a smoothing term, so an
item without a class scores ~0 loss when it predicts none, not 0/0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per item and class; logits/targets (N, C, H, W), valid (N, H, W) -> (N, C)."""
    probs = torch.sigmoid(logits) * valid[:, None]
    targets = targets * valid[:, None]
    dims = (2, 3)
    intersection = (probs * targets).sum(dims)
    denominator = probs.sum(dims) + targets.sum(dims)
    return 1.0 - (2.0 * intersection + eps) / (denominator + eps)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per item and class over valid pixels -> (N, C)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * valid[:, None]
    return per_pixel.sum((2, 3)) / valid.sum((1, 2)).clamp(min=1)[:, None]


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per item and class over valid pixels -> (N, C)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    per_pixel = (1 - p_t) ** gamma * bce * valid[:, None]
    return per_pixel.sum((2, 3)) / valid.sum((1, 2)).clamp(min=1)[:, None]


def segmentation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    *,
    kind: str = "dice_bce",
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """Weighted Dice + BCE (or focal), averaged over classes with `class_weights` -> scalar.

    Shapes: logits and targets (N, C, H, W), valid (N, H, W); extra leading axes (clips: B, K) are
    folded into N.
    """
    c, h, w = logits.shape[-3:]
    logits = logits.reshape(-1, c, h, w).float()
    targets = targets.reshape(-1, c, h, w).float()
    valid = valid.reshape(-1, h, w).float()
    pixel = focal_loss(logits, targets, valid, focal_gamma) if kind == "dice_focal" else bce_loss(logits, targets, valid)
    per_class = (dice_weight * soft_dice_loss(logits, targets, valid) + bce_weight * pixel).mean(0)
    if class_weights is None:
        return per_class.mean()
    weights = class_weights.to(per_class)
    return (per_class * weights).sum() / weights.sum()
