"""Validation Dice of a model during training: pooled per-class counts over fixed validation samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sam4em.training.method_builder import TrainableModel

__all__ = ["dice_from_counts", "validate"]


def dice_from_counts(counts: torch.Tensor) -> np.ndarray:
    """Counts (3, C) of true positives, false positives and false negatives -> hard Dice per class (C,).

    2TP / (2TP + FP + FN); 1 for a class absent from both prediction and truth.
    """
    scores = []
    for tp, fp, fn in counts.T.tolist():
        tp, fp, fn = int(tp), int(fp), int(fn)
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator > 0 else 1.0)
    return np.array(scores)


@torch.no_grad()
def validate(
    model: TrainableModel, dataset: Sequence[dict[str, Any]], *, clip: bool, device: torch.device, batch_size: int = 4
) -> np.ndarray:
    """Hard Dice per class (threshold 0.5 on the final stage) over all validation samples -> (C,).

    Counts are pooled over the samples (slices (C, Y, X) or clips (K, C, Y, X)), only where `valid`.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, model.num_classes, dtype=torch.float64)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        image = torch.stack([it["image"] for it in items]).to(device)
        targets = torch.stack([it["targets"] for it in items]).to(device) > 0.5
        valid = torch.stack([it["valid"] for it in items]).to(device)
        pred = (model.forward_clip(image) if clip else model(image)).logits > 0
        c = pred.shape[-3]
        pred = pred.reshape(-1, c, *pred.shape[-2:])
        targets = targets.reshape(-1, c, *targets.shape[-2:])
        valid = valid.reshape(-1, 1, *valid.shape[-2:])
        tp = (pred & targets & valid).sum((0, 2, 3))
        fp = (pred & ~targets & valid).sum((0, 2, 3))
        fn = (~pred & targets & valid).sum((0, 2, 3))
        counts += torch.stack([tp, fp, fn]).double().cpu()
    model.train(was_training)
    return dice_from_counts(counts)
