"""One training stage, in named steps: set up (or resume), train a step, validate and select,
checkpoint, finish.

Everything a step does is a function of (seed, stage, step): the samples come from
`sam4em.data.samples` by index, and the checkpoint holds model, optimiser, scheduler, RNG and
selection state, so a resumed stage continues exactly where the interrupted one was (a time-budgeted
stage also keeps the seconds it has run: its budget and learning-rate schedule go on).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sam4em.atomic import write_atomically
from sam4em.data.samples import ClipDataset, SliceCropDataset, VolumeSource
from sam4em.training.checkpoint import save_checkpoint
from sam4em.training.config import StageConfig, TrainConfig
from sam4em.training.feed import StepTimer, loader_options
from sam4em.training.method_builder import TrainableModel, is_clip_model
from sam4em.training.run_log import Interrupt, MetricsLog
from sam4em.training.schedule import StageBudget
from sam4em.training.selection import RunResult, Selection
from sam4em.training.step import StepIndices, StepLoss, collate, parameter_groups
from sam4em.training.validation import validate
from sam4em.training.volumes import stage_dataset

__all__ = ["RunContext", "StageRunner", "stage_settings"]

#: The validation samples' seed, apart from the training samples' (`config.seed`).
VAL_SEED_OFFSET = 7919


@dataclass
class RunContext:
    """What every stage of one run shares: the model, the config, the data, where it writes, which process."""

    model: TrainableModel
    class_names: tuple[str, ...]
    config: TrainConfig
    train_sources: list[VolumeSource]
    val_sources: list[VolumeSource]
    out_dir: Path
    log: MetricsLog
    result: RunResult
    interrupt: Interrupt
    device: torch.device
    rank: int = 0
    world: int = 1
    progress: bool = True


def stage_settings(model: TrainableModel, config: TrainConfig, stage: int) -> StageConfig:
    """`config.stage1` or `config.stage2`; a volumetric model (the 3D U-Net) trains on the clip length it
    was built for in any stage."""
    settings: StageConfig = config.stage1 if stage == 1 else config.stage2
    clip_length = model.info.clip_length
    return replace(settings, clip_length=clip_length) if clip_length is not None else settings


class StageRunner:
    """Trains `stage` of a run: ``StageRunner(run, stage, state).run()``; `state` is the checkpoint of
    this stage to resume from (None: start it afresh)."""

    def __init__(self, run: RunContext, stage: int, state: dict[str, Any] | None) -> None:
        self.run_context, self.stage = run, stage
        model, config = run.model, run.config
        self.settings = stage_settings(model, config, stage)
        self.clip = is_clip_model(model, stage)
        self.train_set = self._dataset(run.train_sources, train=True)
        self.train_set.set_epoch(stage)
        # The validation samples are fixed (no augmentation, fixed seed): read them once per stage. None when
        # sparse annotation left no annotated validation slice: the stage then keeps its last weights.
        self.val_items: list[dict[str, Any]] = []
        if run.val_sources:
            val_set = self._dataset(run.val_sources, train=False)
            self.val_items = [val_set[i] for i in range(len(val_set))]
        self.groups = parameter_groups(model, stage, self.settings)
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=config.weight_decay)
        # The cosine follows whichever budget ends first: steps or, for a time-budgeted stage, max_seconds.
        self.budget = StageBudget(
            steps=self.settings.steps, max_seconds=self.settings.max_seconds, warmup_steps=self.settings.warmup_steps,
            seconds_before=state.get("seconds", 0.0) if state is not None else 0.0,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.budget.lr_factor(s))
        self.step_loss = StepLoss(model, config, clip=self.clip).to(run.device)
        self.ddp = DistributedDataParallel(self.step_loss) if run.world > 1 else None
        self.best_path = run.out_dir / "checkpoints" / f"best_stage{stage}.safetensors"
        self.step = 0
        self.selection = self._resume(state) if state is not None else self._start()

    def _dataset(self, sources: list[VolumeSource], *, train: bool) -> SliceCropDataset | ClipDataset:
        config = self.run_context.config
        samples = max(1, self.settings.steps * self.settings.batch_size) if train else config.val_samples
        return stage_dataset(
            sources, clip=self.clip, stage=self.settings, size=self.run_context.model.image_size, config=config,
            train=train, samples=samples, seed=config.seed if train else config.seed + VAL_SEED_OFFSET,
        )

    # -- set-up -------------------------------------------------------------------------------------
    def _resume(self, state: dict[str, Any]) -> Selection:
        """Continue an interrupted stage from its checkpoint `state`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.run_context.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.run_context.device)
        self.step = state["step"]
        return Selection.from_state(self.stage, state)

    def _start(self) -> Selection:
        """Start the stage afresh. Selection across stages: the weights it starts from (an earlier stage's
        best, or `init_from`) stay unless its training beats them on its own validation samples."""
        run = self.run_context
        torch.manual_seed(run.config.seed + 1000 * self.stage)
        selection = Selection(self.stage)
        incoming = run.result.kept or ("init_from" if run.config.init_from else None)
        if incoming and self.val_items:
            selection.best, selection.best_from = self._validate(), incoming
            if run.rank == 0:
                save_weights(run.model, self.best_path)
        return selection

    def _loader(self) -> DataLoader[Any]:
        run, config = self.run_context, self.run_context.config
        micro = self.settings.batch_size // (config.grad_accumulation * run.world)
        return DataLoader(
            self.train_set,
            batch_size=micro,
            sampler=StepIndices(self.step, self.settings.steps, config.grad_accumulation, run.world, run.rank, micro),
            collate_fn=collate,
            # Its own generator: a loader draws its workers' base seed when it starts, and from the global
            # generator that would shift the dropout of memory attention (stage 2) after a resume.
            generator=torch.Generator().manual_seed(config.seed + 1000 * self.stage),
            **loader_options(config.num_workers, run.device),  # unset: by the device (sam4em.training.feed)
        )

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Train the stage to its end; False when interrupted (after saving a checkpoint)."""
        run = self.run_context
        batches = iter(self._loader())
        # A time-budgeted stage has no meaningful step total: show the count and the rate instead.
        total = self.settings.steps if self.settings.max_seconds is None else None
        bar = tqdm(total=total, initial=self.step, desc=f"stage {self.stage}", disable=not run.progress, leave=False)
        self.budget.start()
        timer = StepTimer()
        run.model.train()
        while self.step < self.settings.steps:
            if run.interrupt.requested(self.stage, self.step):
                if run.rank == 0:
                    save_checkpoint(run.out_dir / "checkpoints", self._checkpoint_state())
                bar.close()
                return False
            losses = self._train_step(batches, timer)
            steps_per_s, data_wait = timer.finish()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[0]:.3f}")
            row = self._row(losses, steps_per_s, data_wait)
            out_of_time = self.budget.out_of_time()
            if self.val_items and (self.step % run.config.val_every == 0 or self.step == self.settings.steps or out_of_time):
                self._validate_and_select(row)
            run.log.write(row)
            patience = run.config.early_stopping_patience
            stop_early = patience is not None and self.selection.patience >= patience
            if run.rank == 0 and (self.step % run.config.checkpoint_every == 0 or self.step == self.settings.steps):
                save_checkpoint(run.out_dir / "checkpoints", self._checkpoint_state())
            if stop_early or out_of_time:
                break
        bar.close()
        self._finish()
        return True

    def _train_step(self, batches: Any, timer: StepTimer) -> torch.Tensor:
        """One optimiser step over `grad_accumulation` micro-batches (on every process) -> mean losses (3,)."""
        run, config = self.run_context, self.run_context.config
        accumulation = config.grad_accumulation
        losses = torch.zeros(3)
        self.optimizer.zero_grad(set_to_none=True)
        timer.start()
        for a in range(accumulation):
            with timer.waiting():
                batch = next(batches)
            # Gradients are all-reduced in the last accumulation round only.
            last = a == accumulation - 1
            context = self.ddp.no_sync() if (self.ddp is not None and not last) else nullcontext()
            with context, self._autocast():
                image, targets, valid = (batch[k].to(run.device, non_blocking=True) for k in ("image", "targets", "valid"))
                parts = (self.ddp or self.step_loss)(image, targets, valid)
            (parts[0] / accumulation).backward()
            losses += parts.detach().float().cpu() / accumulation
        if run.world > 1:
            dist.all_reduce(losses)
            losses /= run.world
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.groups for p in g["params"]], config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def _autocast(self) -> AbstractContextManager[Any]:
        device = self.run_context.device
        if self.run_context.config.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _row(self, losses: torch.Tensor, steps_per_s: float, data_wait: float) -> dict[str, Any]:
        """The metrics.csv row of the step just done (validation columns are added when it validates)."""
        return {
            "stage": self.stage,
            "step": self.step,
            "loss": f"{losses[0]:.6f}",
            "loss_stage1": f"{losses[1]:.6f}",
            "loss_stage2": f"{losses[2]:.6f}",
            "lr": f"{self.optimizer.param_groups[0]['lr']:.3e}",
            "seconds": f"{self.budget.elapsed():.2f}",
            "steps_per_s": f"{steps_per_s:.3f}",
            "data_wait": f"{data_wait:.3f}",  # share of the step spent waiting for the batch
        }

    # -- validation and selection ---------------------------------------------------------------------
    def _validate(self) -> float:
        dice = validate(self.run_context.model, self.val_items, clip=self.clip, device=self.run_context.device)
        return float(dice.mean())

    def _validate_and_select(self, row: dict[str, Any]) -> None:
        """Score the current weights on the validation samples into `row`; keep them when they are the best."""
        run = self.run_context
        dice = validate(run.model, self.val_items, clip=self.clip, device=run.device)
        run.model.train()
        row.update({f"val_dice_{n}": f"{d:.4f}" for n, d in zip(run.class_names, dice, strict=True)})
        row["val_dice_mean"] = f"{dice.mean():.4f}"
        if self.selection.record(float(dice.mean())) and run.rank == 0:
            save_weights(run.model, self.best_path)

    # -- checkpoints and the end ----------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        result, device = self.run_context.result, self.run_context.device
        # The GPU has its own generator (dropout there draws from it); only the device's own is saved.
        cuda_rng = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
        return {
            "stage": self.stage,
            "step": self.step,
            "model": self.run_context.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "seconds": self.budget.elapsed(),
            "rng": torch.get_rng_state(),
            **cuda_rng,
            **self.selection.state(),
            "scores": dict(result.best_scores),
            "kept": result.kept,
            "kept_score": result.kept_score,
        }

    def _finish(self) -> None:
        """Load the stage's best weights, record the outcome, and checkpoint the start of the next stage."""
        run = self.run_context
        if run.world > 1:
            dist.barrier()
        if self.best_path.exists():
            # Model selection on the validation split: the next stage and the saved model use the best.
            run.model.load_state_dict(load_file(self.best_path), strict=True)
        if not self.val_items:
            self.selection.unscored()
        run.result.best_scores[self.stage] = self.selection.own_best
        run.result.steps[self.stage] = self.step
        run.result.kept, run.result.kept_score = self.selection.best_from, self.selection.best
        if run.rank == 0:
            state_after = self._checkpoint_state()
            state_after["stage"], state_after["step"] = self.stage + 1, 0
            save_checkpoint(run.out_dir / "checkpoints", state_after)


def save_weights(model: nn.Module, path: Path) -> None:
    """`model`'s weights to a safetensors file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda temporary: save_file(state, str(temporary)))
