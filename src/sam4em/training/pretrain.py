"""`pretrain(volumes, out_dir, settings)`: self-supervised pretraining of SAM2's image encoder on
unlabelled EM (masked image modelling, see `sam4em.models.masked_image`).

Objective: hide `mask_ratio` of the image in `mask_unit`-pixel squares, reconstruct the hidden
pixels; the target of every 16x16 patch is normalised by its own mean and standard deviation
(MAE's norm-pix), so a model that predicts only local brightness scores 1.0 (the mean predictor's
loss) and anything below 1.0 is structure learned from the context.

The learning rate warms up over `warmup_steps`, then follows a cosine to 0 over whichever budget,
steps or seconds, ends first (`sam4em.training.schedule`, shared with `sam4em train`).
A step's crops and masks are functions of (seed, step), and the checkpoint holds model, optimiser
and elapsed time, so a step-budgeted run resumed after an interruption ends bit-identical to one
that was never interrupted. The run folder ends with ``encoder.safetensors`` + ``config.yaml``: a
base for `sam4em train` (``model.base: RUN``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from tqdm.auto import tqdm

from sam4em.atomic import write_atomically, write_text_atomically
from sam4em.data.unlabelled import UnlabelledCrops, UnlabelledVolume
from sam4em.models.encoder_weights import ENCODER_FILE, PRETRAIN_CONFIG
from sam4em.models.masked_image import DECODER_STRIDE, MaskedImageModel, build_masked_image_model
from sam4em.training.checkpoint import load_checkpoint, save_checkpoint
from sam4em.training.run_log import Interrupt, MetricsLog
from sam4em.training.schedule import StageBudget


@dataclass
class PretrainSettings:
    """Everything that decides a pretraining run (saved in its config.yaml; a resume must match)."""

    base: str = "cpu-small"
    pretrained: bool = False
    steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    mask_ratio: float = 0.6
    mask_unit: int = 16
    image_size: int | None = None
    seed: int = 0
    checkpoint_every: int = 50
    tensorboard: bool = True
    volumes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ValueError("pretraining needs a budget: --steps N and/or --max-seconds S")
        if (self.steps is not None and self.steps < 1) or (self.max_seconds is not None and self.max_seconds <= 0):
            raise ValueError("--steps must be >= 1 and --max-seconds > 0")
        if not 0 < self.mask_ratio < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("mask ratio must be in (0, 1), batch size >= 1 and lr > 0")


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_loss: float
    interrupted: bool = False
    #: A resume of a run that had finished: nothing was done, the numbers are the run's.
    already_complete: bool = False


def masked_reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, mask_unit: int) -> torch.Tensor:
    """Mean squared error on hidden pixels against per-patch normalised targets (patches of 16x16).

    reconstruction, images (B, 1, S, S); masks (B, S/u, S/u) bool, True = hidden.
    """
    b, _, s, _ = images.shape
    p = DECODER_STRIDE
    patches = images.reshape(b, s // p, p, s // p, p).permute(0, 1, 3, 2, 4)  # (B, S/p, S/p, p, p)
    mean = patches.mean(dim=(-1, -2), keepdim=True)
    std = patches.var(dim=(-1, -2), keepdim=True, unbiased=False).add(1e-4).sqrt()
    target = ((patches - mean) / std).permute(0, 1, 3, 2, 4).reshape(b, 1, s, s)
    hidden = masks.repeat_interleave(mask_unit, 1).repeat_interleave(mask_unit, 2)[:, None]
    error = (reconstruction.float() - target) ** 2
    return (error * hidden).sum() / hidden.sum().clamp(min=1)


def _prepare(out_dir: Path, settings: PretrainSettings, *, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite a run, or to resume one made with other settings; write config.yaml. Returns
    the recorded outcome of a run that is finished already (its files are left as they are), else None."""
    config = out_dir / PRETRAIN_CONFIG
    started = (out_dir / "checkpoints").exists() or (out_dir / ENCODER_FILE).exists()
    record = {"pretrain": dataclasses.asdict(settings)}
    if started and not resume:
        raise FileExistsError(f"{out_dir}: holds a pretraining run already; pass --resume to continue it or choose a new --out")
    if resume and config.exists():
        recorded = yaml.safe_load(config.read_text()) or {}
        stored = recorded.get("pretrain", {})
        differ = sorted(k for k, v in record["pretrain"].items() if stored.get(k) != v)
        if differ:
            raise ValueError(f"{config}: --resume with other settings ({', '.join(differ)}); resume with the same ones or choose a new --out")
        if (out_dir / ENCODER_FILE).exists() and recorded.get("outcome"):  # written last: the run is complete
            return dict(recorded["outcome"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(config, yaml.safe_dump(record, sort_keys=False))
    return None


def pretrain(
    volumes: list[str],
    out_dir: str | Path,
    settings: PretrainSettings,
    *,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int, int], bool] | None = None,
) -> PretrainResult:
    """Pretrain `settings.base`'s image encoder on `volumes` (``PATH[:KEY][@Z0-Z1]``) into `out_dir`.

    Writes config.yaml, metrics.csv, tensorboard/, checkpoints/last.pt, reconstructions.png and, at the
    end, encoder.safetensors. Returns with ``interrupted=True`` after SIGINT/SIGTERM or `should_stop`
    (called as ``should_stop(0, step)``), having saved a checkpoint that ``resume=True`` continues.
    """
    settings = dataclasses.replace(settings, volumes=list(volumes))
    settings.validate()
    out_dir = Path(out_dir)
    sources = [UnlabelledVolume.parse(v) for v in volumes]
    model = build_masked_image_model(
        settings.base, pretrained=settings.pretrained, image_size=settings.image_size, mask_unit=settings.mask_unit
    )
    crops = UnlabelledCrops(sources, crop_size=model.image_size, samples=2**62, seed=settings.seed)
    finished = _prepare(out_dir, settings, resume=resume)
    if finished is not None:
        return PretrainResult(out_dir, finished["steps"], finished["seconds"], finished["final_loss"], already_complete=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.95))
    step, seconds_before, loss_value = 0, 0.0, float("nan")
    checkpoint = load_checkpoint(out_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, seconds_before = checkpoint["step"], checkpoint["seconds"]
        loss_value = float(checkpoint.get("loss", loss_value))  # a run killed after its last step reports it
    log = MetricsLog(out_dir, (), enabled=True, tensorboard=settings.tensorboard)
    log.truncate_after(0, step)
    interrupt = Interrupt(should_stop)
    bar = tqdm(total=settings.steps, initial=step, desc="pretrain", disable=not progress, leave=False)
    budget = StageBudget(steps=settings.steps, max_seconds=settings.max_seconds, warmup_steps=settings.warmup_steps,
                         seconds_before=seconds_before)
    elapsed = budget.elapsed
    budget.start()

    def save() -> None:
        save_checkpoint(out_dir / "checkpoints", {
            "step": step, "seconds": elapsed(), "loss": loss_value, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        })

    model.train()
    try:
        with interrupt.installed():
            while not budget.spent(step):
                if interrupt.requested(0, step):
                    save()
                    return PretrainResult(out_dir, step, elapsed(), loss_value, interrupted=True)
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * budget.lr_factor(step)
                images, masks = _batch(crops, model, step, settings)
                loss = masked_reconstruction_loss(model(images, masks), images, masks, settings.mask_unit)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                step, loss_value = step + 1, float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                log.write({"stage": 0, "step": step, "loss": f"{loss_value:.6f}",
                           "lr": f"{optimizer.param_groups[0]['lr']:.3e}", "seconds": f"{elapsed():.2f}"})
                if step % settings.checkpoint_every == 0:
                    save()
    finally:
        bar.close()
        log.close()
    save()
    _finish(model, crops, out_dir, settings, step=step, seconds=elapsed(), loss=loss_value)
    return PretrainResult(out_dir, step, elapsed(), loss_value)


def _batch(crops: UnlabelledCrops, model: MaskedImageModel, step: int, settings: PretrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops and masks of `step`: functions of (seed, step) only."""
    first = step * settings.batch_size
    images = torch.stack([crops[i]["image"] for i in range(first, first + settings.batch_size)])
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    return images, model.random_masks(settings.batch_size, model.image_size, settings.mask_ratio, generator)


def _finish(model: MaskedImageModel, crops: UnlabelledCrops, out_dir: Path, settings: PretrainSettings, *,
            step: int, seconds: float, loss: float) -> None:
    """encoder.safetensors (atomic), the reconstruction figure, and the outcome in config.yaml."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.encoder.state_dict().items()}
    save_reconstructions(model, crops, out_dir / "reconstructions.png", settings)
    config = out_dir / PRETRAIN_CONFIG
    record = {"pretrain": dataclasses.asdict(settings),
              "outcome": {"steps": step, "seconds": round(seconds, 1), "final_loss": round(loss, 4),
                          "mean_predictor_loss": 1.0}}
    write_text_atomically(config, yaml.safe_dump(record, sort_keys=False))
    # Last: the folder is a usable base only when complete.
    write_atomically(out_dir / ENCODER_FILE,
                     lambda path: save_file(state, str(path), metadata={"format": "pt", "base": settings.base}))


@torch.no_grad()
def save_reconstructions(model: MaskedImageModel, crops: UnlabelledCrops, path: Path, settings: PretrainSettings, count: int = 4) -> None:
    """A PNG with one row per crop: input, masked input, reconstruction (hidden patches de-normalised
    with the true patch mean/std, visible pixels from the input)."""
    from matplotlib.figure import Figure

    was_training = model.training
    model.eval()
    images = torch.stack([crops[i]["image"] for i in range(count)])
    masks = model.random_masks(count, model.image_size, settings.mask_ratio, torch.Generator().manual_seed(settings.seed))
    prediction = model(images, masks)
    model.train(was_training)
    p = DECODER_STRIDE
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, 1, S/p, S/p, p, p)
    mean = patches.mean(dim=(-1, -2)).repeat_interleave(p, 2).repeat_interleave(p, 3)
    std = patches.std(dim=(-1, -2), unbiased=False).repeat_interleave(p, 2).repeat_interleave(p, 3)
    hidden = masks.repeat_interleave(settings.mask_unit, 1).repeat_interleave(settings.mask_unit, 2)[:, None]
    filled = torch.where(hidden, prediction * std + mean, images)
    figure = Figure(figsize=(7.5, 2.5 * count))
    axes = figure.subplots(count, 3, squeeze=False)
    for row in range(count):
        panels = (images[row, 0], torch.where(hidden[row, 0], 0.5, images[row, 0]), filled[row, 0])
        for column, (title, panel) in enumerate(zip(("input", "masked", "reconstruction"), panels, strict=True)):
            axes[row, column].imshow(np.asarray(panel.clamp(0, 1)), cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
