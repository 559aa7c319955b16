"""One optimisation step's parts: what trains in a stage, the loss as a module (so that
`DistributedDataParallel` can wrap it) and the sample indices each process reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sam4em.models import SAM4EM, set_trainable
from sam4em.training.config import StageConfig, TrainConfig
from sam4em.training.losses import segmentation_loss
from sam4em.training.method_builder import TrainableModel

__all__ = ["StepIndices", "StepLoss", "collate", "parameter_groups"]

_BLOCKS = "image_encoder.backbone.blocks."  # Hiera's blocks in SAM4EM's state, numbered from the pixels


def parameter_groups(model: TrainableModel, stage: int, settings: StageConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups in `stage`: in stage 2 the memory at ``settings.lr``, the rest
    at ``lr * adapter_lr_scale`` (frozen when that is 0); in stage 1 everything that trains at ``lr``.

    With ``settings.layer_decay`` d < 1, SAM2's image encoder learns layer-wise slower, as MAE and BEiT
    fine-tune a pretrained encoder: Hiera block i of N at d**(N - i) times the rate, the patch and
    position embeddings at d**(N + 1), the FPN neck and everything after the encoder at the full rate.
    """
    if isinstance(model, SAM4EM):
        finetune = model.info.build_options.finetune
        assert finetune is not None, "a built SAM4EM's options name how it fine-tunes"
        set_trainable(model, finetune=finetune, memory=stage == 2)
    blocks = len({name.split(".")[3] for name, _ in model.named_parameters() if name.startswith(_BLOCKS)})
    memory = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("memory.")]
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("memory.")]
    if stage == 2 and memory:
        if settings.adapter_lr_scale == 0:
            for _, p in rest:
                p.requires_grad_(False)
            rest = []
        rest_groups = _layer_decayed(rest, settings.lr * settings.adapter_lr_scale, settings.layer_decay, blocks)
        return [{"params": [p for _, p in memory], "lr": settings.lr}, *rest_groups]
    return _layer_decayed(rest + memory, settings.lr, settings.layer_decay, blocks)


def _layer_decayed(named: list[tuple[str, nn.Parameter]], lr: float, decay: float, blocks: int) -> list[dict[str, Any]]:
    """One group per rate (one group in all when `decay` is 1), the full rate first (metrics.csv logs the
    first group's rate), each group's parameters in the order they come."""
    groups: dict[int, list[nn.Parameter]] = {}
    for name, parameter in named:
        if name.startswith(_BLOCKS):
            depth = blocks - int(name.split(".")[3])
        elif name.startswith("image_encoder.backbone."):
            depth = blocks + 1
        else:
            depth = 0
        groups.setdefault(depth if decay != 1 else 0, []).append(parameter)
    return [{"params": groups[depth], "lr": lr * decay**depth} for depth in sorted(groups)]


class StepLoss(nn.Module):
    """The training loss of a batch -> (3,): total, stage-1 decoder loss, stage-2 decoder loss (0 without)."""

    def __init__(self, model: TrainableModel, config: TrainConfig, *, clip: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = config.loss
        self.clip = clip
        weights = config.loss.class_weights
        self.class_weights = torch.tensor(weights, dtype=torch.float32) if weights else None

    def forward(self, image: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_clip(image) if self.clip else self.model(image)
        loss1 = self._loss(out.stage1, targets, valid)
        if out.stage2 is None:
            return torch.stack([loss1, loss1, loss1.new_zeros(())])
        loss2 = self._loss(out.stage2, targets, valid)
        total = self.loss.stage1_weight * loss1 + self.loss.stage2_weight * loss2
        return torch.stack([total, loss1, loss2])

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(
            logits,
            targets,
            valid,
            kind=self.loss.kind,
            dice_weight=self.loss.dice_weight,
            bce_weight=self.loss.bce_weight,
            class_weights=self.class_weights,
            focal_gamma=self.loss.focal_gamma,
        )


class StepIndices:
    """Sample indices of this process's share of steps `start`..`steps` (lazy: budgets may be huge).

    Step s, accumulation round a, rank r reads items ((s * A + a) * W + r) * micro + j, so the global
    batch of a step is the same whatever the number of processes, and a resumed run reads on.
    """

    def __init__(self, start: int, steps: int, accumulation: int, world: int, rank: int, micro: int) -> None:
        self.start, self.steps, self.accumulation = start, steps, accumulation
        self.world, self.rank, self.micro = world, rank, micro

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start, self.steps):
            for a in range(self.accumulation):
                base = ((s * self.accumulation + a) * self.world + self.rank) * self.micro
                yield from range(base, base + self.micro)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accumulation * self.micro


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A batch of samples: their image, targets and valid masks stacked."""
    return {key: torch.stack([it[key] for it in items]) for key in ("image", "targets", "valid")}
