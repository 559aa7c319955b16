"""Figures of a training run (files only, no display): its curves from metrics.csv, and predictions on
validation samples beside their ground truth, as overlays. Built on `matplotlib.figure.Figure`, so no
global plotting state (backend, open figures) is touched."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from sam4em.training.method_builder import TrainableModel

__all__ = ["overlay", "plot_training_curves", "plot_validation_overlay", "save_overlay_grid"]

_COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.3, 0.5, 1.0], [1.0, 0.8, 0.1], [0.9, 0.3, 0.9]])


def plot_training_curves(metrics_csv: Path, out: Path) -> None:
    """Loss and validation Dice against step, one panel each, stages in sequence."""
    with Path(metrics_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_val = fig.subplots(1, 2)
    offset, last_stage = 0, None
    x: list[int] = []
    for row in rows:
        if row["stage"] != last_stage and x:
            offset = x[-1]
        last_stage = row["stage"]
        x.append(offset + int(row["step"]))
    loss = [float(r["loss"]) for r in rows]
    ax_loss.plot(x, loss, lw=0.8)
    ax_loss.set(xlabel="step (stages in sequence)", ylabel="training loss", title="loss")
    val_keys = [k for k in rows[0] if k.startswith("val_dice_") and k != "val_dice_mean"]
    plotted = False
    for key in val_keys:
        points = [(xi, float(r[key])) for xi, r in zip(x, rows, strict=True) if r.get(key)]
        if points:
            ax_val.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("val_dice_"))
            plotted = True
    ax_val.set(xlabel="step", ylabel="validation Dice", title="validation (held-out z-range)", ylim=(0, 1))
    if plotted:  # a run without validation samples has no scores to name
        ax_val.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Gray image (Y, X) in [0, 1] with binary masks (C, Y, X) tinted per class -> RGB (Y, X, 3)."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    for c, mask in enumerate(masks):
        colour = _COLOURS[c % len(_COLOURS)]
        rgb[mask > 0] = (1 - alpha) * rgb[mask > 0] + alpha * colour
    return rgb


def save_overlay_grid(
    images: list[np.ndarray], truths: list[np.ndarray], preds: list[np.ndarray], out: Path,
    titles: list[str] | None = None,
) -> None:
    """Rows of (image, truth overlay, prediction overlay); images (Y, X), masks (C, Y, X)."""
    n = len(images)
    fig = Figure(figsize=(9, 3 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        for ax, picture, name in zip(
            axes[i],
            (images[i], overlay(images[i], truths[i]), overlay(images[i], preds[i])),
            ("image", "ground truth", "prediction"),
            strict=True,
        ):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_title(f"{name}{' ' + titles[i] if titles else ''}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


@torch.no_grad()
def plot_validation_overlay(
    model: TrainableModel, dataset: Sequence[dict[str, Any]], out: Path, *, clip: bool, device: torch.device
) -> None:
    """Predictions of `model` on the first (up to 4) validation samples, next to the ground truth."""
    model.eval()
    images, truths, preds = [], [], []
    for index in range(min(4, len(dataset))):
        item = dataset[index]
        image = item["image"][None].to(device)
        logits = (model.forward_clip(image) if clip else model(image)).logits[0]
        if clip:  # show the last slice of the clip: the one with the most memory
            image, logits, targets = item["image"][-1, 0], logits[-1], item["targets"][-1]
        else:
            image, targets = item["image"][0], item["targets"]
        images.append(image.numpy())
        truths.append(targets.numpy() > 0.5)
        preds.append((logits > 0).cpu().numpy())
    save_overlay_grid(images, truths, preds, out)
