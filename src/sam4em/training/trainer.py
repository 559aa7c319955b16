"""`train(config, out_dir)`: dual-stage fine-tuning, resumable, data-parallel under torchrun.

Stage 1 (2D) trains on single-slice crops: LoRA, enhancer, prompt generator and both decoders.
Stage 2 (3D) trains on clips of K consecutive slices in z order, each clip from an empty memory and
without any ground truth as prompt; it trains the memory encoder and memory attention, and the rest
at a lower rate. Every stage selects its best weights on the validation split (never the test
volume) and the next stage starts from them; a later stage replaces them only by beating them on its
own validation samples, so the run ends with the best weights across stages (recorded in
``config.yaml``, section ``selection``). Everything that can be checked before training is checked
first (`sam4em.training.preflight`), and the run folder holds a usable model after every stage.

Everything a step does is a function of (seed, stage, step): the samples come from
`sam4em.data.samples` by index, and the checkpoint holds model, optimiser, scheduler and RNG state,
so a resumed run continues exactly where the interrupted one was (a time-budgeted stage also keeps
the seconds it has run: its budget and learning-rate schedule go on, `sam4em.training.schedule`).
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sam4em.claim import claim_output
from sam4em.data.augment import AugmentConfig
from sam4em.data.class_mapping import ClassMapping, ClassMappingError
from sam4em.data.samples import ClipDataset, SliceCropDataset, VolumeSource, resolve_labelled_slices
from sam4em.data.splits import split_z
from sam4em.evaluation.metrics import SemanticCounts
from sam4em.io import open_volume, parse_path_key
from sam4em.models.registry import set_trainable
from sam4em.models.sam4em import SAM4EM
from sam4em.models.serialization import load_model, save_model
from sam4em.training.checkpoint import load_checkpoint, save_checkpoint
from sam4em.training.config import ConfigError, StageConfig, TrainConfig, config_to_dict
from sam4em.training.feed import StepTimer, loader_options
from sam4em.training.losses import segmentation_loss
from sam4em.training.methods import build_method, is_clip_model
from sam4em.training.preflight import check_batches, check_splits, stage_depths
from sam4em.training.run_folder import check_run_dir, prepare_run_dir
from sam4em.training.schedule import StageBudget


@dataclass
class RunResult:
    """What a training run produced."""

    run_dir: Path
    best_scores: dict[int, float] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    # Which weights the model holds ("stage 1", "stage 2", "init_from") and their validation Dice on
    # the samples of the last stage run.
    kept: str = ""
    kept_score: float = float("nan")


class _Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self, should_stop: Callable[[int, int], bool] | None = None) -> None:
        self._requested = False
        self.should_stop = should_stop

    def requested(self, stage: int, step: int) -> bool:
        return self._requested or (self.should_stop is not None and self.should_stop(stage, step))

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self._requested = True


# -- data ---------------------------------------------------------------------------------------
def volume_sources(config: TrainConfig, mapping: ClassMapping) -> tuple[list[VolumeSource], list[VolumeSource]]:
    """Train and validation sources: each volume's validation part is a contiguous z-block."""
    train, val = [], []
    # No training sample within one clip of a validation sample: a gap of the longest sample depth.
    gap = max(stage_depths(config).values())
    for index, volume in enumerate(config.volumes):
        image_path, image_key = parse_path_key(volume.image)
        labels_path, labels_key = parse_path_key(volume.labels)
        image_key = volume.image_key or image_key
        labels_key = volume.labels_key or labels_key
        with open_volume(image_path, key=image_key) as image, open_volume(labels_path, key=labels_key) as labels:
            if tuple(image.shape) != tuple(labels.shape):
                raise ConfigError(
                    f"volumes[{index}]: image {image_path} has shape {tuple(image.shape)} but labels {labels_path} "
                    f"have {tuple(labels.shape)}"
                )
            try:
                mapping.validate(labels, allow_empty=True)  # a volume without foreground still teaches background
            except ClassMappingError as error:
                raise ConfigError(f"volumes[{index}]: labels {labels_path}: {error}; fix `classes`") from None
            slices = int(image.shape[0])
        start, stop = volume.z_range or (0, slices)
        if not 0 <= start < stop <= slices:
            raise ConfigError(f"volumes[{index}].z_range: {[start, stop]} is outside the {slices} slices of {image_path}")
        try:
            train_z, val_z = split_z(stop - start, volume.val_fraction, volume.val_position, gap=gap)
        except ValueError as error:
            raise ConfigError(f"volumes[{index}] ({image_path}): {error}") from None
        common = {
            "image_path": image_path,
            "label_path": labels_path,
            "mapping": mapping,
            "image_key": image_key,
            "label_key": labels_key,
            "name": f"volumes[{index}]",  # its place in the config, for messages
            "allow_missing_chunks": volume.allow_missing_chunks,
        }
        train_range, val_range = (start + train_z[0], start + train_z[1]), (start + val_z[0], start + val_z[1])
        try:
            labelled = resolve_labelled_slices(volume.labelled_slices, train_range, (start, stop))
        except ValueError as error:
            raise ConfigError(f"volumes[{index}].{error}") from None
        if labelled is not None and not any(train_range[0] <= z < train_range[1] for z in labelled):
            raise ConfigError(
                f"volumes[{index}].labelled_slices: none of {list(labelled)} is in the training slices "
                f"{train_range[0]}..{train_range[1] - 1}; annotate one there or lower val_fraction"
            )
        train.append(VolumeSource(z_range=train_range, labelled_slices=labelled, **common))
        if labelled is None or any(val_range[0] <= z < val_range[1] for z in labelled):
            # Sparse annotation without an annotated validation slice: this volume cannot validate.
            val.append(VolumeSource(z_range=val_range, labelled_slices=labelled, **common))
    return train, val


def _dataset(sources, *, clip: bool, stage: StageConfig, size: int, samples: int, seed: int, config: TrainConfig, train: bool):
    kwargs = {
        "crop_size": size,
        "samples_per_epoch": samples,
        "p_fg": config.foreground_fraction,
        "augment": AugmentConfig() if (train and config.augment) else None,
        "seed": seed,
    }
    if clip:
        return ClipDataset(sources, clip_length=stage.clip_length, **kwargs)
    return SliceCropDataset(sources, **kwargs)


# -- distributed --------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _device(config: TrainConfig, rank: int) -> torch.device:
    if config.device:
        try:
            device = torch.device(config.device)
        except RuntimeError:
            raise ConfigError(f"device: {config.device!r} is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {config.device} is not on this machine ({torch.cuda.device_count()} CUDA devices); "
                "choose another or leave `device` unset"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


# -- the loss as a module, so that DistributedDataParallel can wrap it ------------------------------
class _StepLoss(nn.Module):
    def __init__(self, model: nn.Module, config: TrainConfig, *, clip: bool) -> None:
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


# -- validation ---------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    model: nn.Module, dataset: Sequence[dict[str, Any]], *, clip: bool, device: torch.device, batch_size: int = 4
) -> np.ndarray:
    """Hard Dice per class (threshold 0.5 on the final stage) over all validation samples -> (C,).

    Counts are pooled over the samples, and a class absent from both prediction and truth scores 1.
    """
    was_training = model.training
    model.eval()
    counts = None
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        image = torch.stack([it["image"] for it in items]).to(device)
        targets = torch.stack([it["targets"] for it in items]).to(device) > 0.5
        valid = torch.stack([it["valid"] for it in items]).to(device)
        logits = (model.forward_clip(image) if clip else model(image)).logits
        pred = logits > 0
        c = pred.shape[-3]
        pred = pred.reshape(-1, c, *pred.shape[-2:])
        targets = targets.reshape(-1, c, *targets.shape[-2:])
        valid = valid.reshape(-1, 1, *valid.shape[-2:])
        tp = (pred & targets & valid).sum((0, 2, 3))
        fp = (pred & ~targets & valid).sum((0, 2, 3))
        fn = (~pred & targets & valid).sum((0, 2, 3))
        batch = torch.stack([tp, fp, fn]).double().cpu()
        counts = batch if counts is None else counts + batch
    model.train(was_training)
    return np.array([SemanticCounts(int(tp), int(fp), int(fn), 0).dice for tp, fp, fn in counts.T.tolist()])


# -- logging ------------------------------------------------------------------------------------
class _MetricsLog:
    """RUN_DIR/metrics.csv (one row per step) and optional TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, class_names: tuple[str, ...], *, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.columns = [
            "stage",
            "step",
            "loss",
            "loss_stage1",
            "loss_stage2",
            "lr",
            "seconds",
            "steps_per_s",
            "data_wait",
            *[f"val_dice_{n}" for n in class_names],
            "val_dice_mean",
        ]
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, stage: int, step: int) -> None:
        """On resume: forget rows logged after the checkpoint, which will be redone."""
        if not self.enabled or not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if (int(r["stage"]), int(r["step"])) <= (stage, step)]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.path.exists():
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)
        if self.writer is not None:
            global_step = row["stage"] * 1_000_000 + row["step"]
            for key, value in row.items():
                if key not in ("stage", "step") and value not in ("", None):
                    self.writer.add_scalar(f"stage{row['stage']}/{key}", float(value), global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# -- the run ------------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int, int], bool] | None = None,
) -> RunResult:
    """Train `config.method` through `config.stages` into `out_dir` (see the module docstring).

    Writes ``config.yaml``, ``metrics.csv``, ``checkpoints/``, ``plots/`` and, after every stage, the
    best model so far as ``model.safetensors``. Returns with ``interrupted=True`` after SIGINT/SIGTERM,
    having saved a checkpoint that ``resume=True`` continues from (with the same config: any other is
    refused); `should_stop(stage, step)` requests the same from code (a GUI's stop button, a job
    scheduler's time limit).
    """
    out_dir = Path(out_dir)
    rank, world = _distributed()
    device = _device(config, rank)
    main = rank == 0
    # One run writes a run folder at a time: a second (say a --resume started twice) is refused.
    with claim_output(out_dir) if main else nullcontext():
        # Whatever can fail before training fails now, before the run folder is touched: the folder itself,
        # data, the splits and clip lengths of every stage, batch arithmetic, the model.
        check_run_dir(out_dir, config, resume=resume)  # on every process: all refuse together, none waits
        mapping = ClassMapping.parse(config.classes)
        train_sources, val_sources = volume_sources(config, mapping)
        check_splits(config, train_sources, val_sources)
        check_batches(config, world)
        model = build_method(config, mapping.num_classes).to(device)
        model.class_names = list(mapping.names)
        if config.init_from:
            _load_weights(model, load_model(config.init_from).state_dict(), f"init_from {config.init_from}")
        if main:
            prepare_run_dir(out_dir, config, resume=resume)
        if world > 1:
            dist.barrier()
        checkpoint = load_checkpoint(out_dir / "checkpoints") if resume else None
        result = RunResult(run_dir=out_dir)
        if checkpoint is not None:
            _load_weights(model, checkpoint["model"], str(out_dir / "checkpoints"))
            result.best_scores = dict(checkpoint.get("scores", {}))
            result.kept, result.kept_score = checkpoint.get("kept", ""), checkpoint.get("kept_score", float("nan"))
        log = _MetricsLog(out_dir, mapping.names, enabled=main, tensorboard=config.tensorboard)
        if checkpoint is None:
            # Rows of a run killed before its first checkpoint are redone from step 0: drop them, not repeat them.
            log.truncate_after(0, 0)
        started = time.time()
        interrupt = _Interrupt(should_stop)
        try:
            with interrupt.installed():
                for stage in config.stages:
                    if checkpoint is not None and checkpoint["stage"] > stage:
                        continue  # finished before the interruption; its best weights are in the checkpoint
                    state = None
                    if checkpoint is not None and checkpoint["stage"] == stage:
                        log.truncate_after(stage, checkpoint["step"])
                        # At step 0 the stage had not begun (the checkpoint between two stages): start it afresh.
                        state = checkpoint if checkpoint["step"] > 0 else None
                    finished = _run_stage(
                        stage, model, config, train_sources, val_sources, out_dir, log, result,
                        device=device, rank=rank, world=world, state=state, interrupt=interrupt, progress=progress and main,
                    )
                    checkpoint = None
                    if not finished:
                        result.interrupted = True
                        return result
                    if main and stage != config.stages[-1]:
                        # A run whose next stage fails still leaves a usable model.
                        save_model(model, out_dir, extra_sections=_record(result, config, stage))
        finally:
            log.close()
        result.seconds = time.time() - started
        if main:
            save_model(model, out_dir, extra_sections=_record(result, config, config.stages[-1]))
            _plots(out_dir, model, config, val_sources, device)
        if world > 1:
            dist.barrier()
        return result


def _record(result: RunResult, config: TrainConfig, stage: int) -> dict[str, Any]:
    """The sections config.yaml gets beside `model` once `stage` has finished: the config and the selection."""
    finished = config.stages[: config.stages.index(stage) + 1]
    selection = {
        "weights_from": result.kept,
        "val_dice_mean": round(result.kept_score, 4),
        "judged_on": f"the validation samples of stage {stage}",
        "best_val_dice_per_stage": {f"stage {s}": round(result.best_scores.get(s, float("nan")), 4) for s in finished},
        "complete": stage == config.stages[-1],
    }
    return {"train": config_to_dict(config), "selection": selection}


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"{source}: its weights do not fit the model of this config ({_first_problem(error)}); "
            "use a config with the same model and classes"
        ) from None


def _first_problem(error: RuntimeError) -> str:
    """The first specific line of a `load_state_dict` error (its first line only says where)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0])[:200] if lines else type(error).__name__


def _parameter_groups(model: nn.Module, stage: int, lr: float, scale: float) -> list[dict[str, Any]]:
    if isinstance(model, SAM4EM):
        set_trainable(model, finetune=model.build_options.finetune, memory=stage == 2)
    memory = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("memory.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("memory.")]
    if stage == 2 and memory:
        groups = [{"params": memory, "lr": lr}]
        if scale > 0:
            groups.append({"params": rest, "lr": lr * scale})
        else:
            for p in rest:
                p.requires_grad_(False)
        return groups
    return [{"params": rest + memory, "lr": lr}]


def _run_stage(
    stage: int,
    model: nn.Module,
    config: TrainConfig,
    train_sources: list[VolumeSource],
    val_sources: list[VolumeSource],
    out_dir: Path,
    log: _MetricsLog,
    result: RunResult,
    *,
    device: torch.device,
    rank: int,
    world: int,
    state: dict[str, Any] | None,
    interrupt: _Interrupt,
    progress: bool,
) -> bool:
    """Train one stage; returns False when interrupted (after saving a checkpoint)."""
    settings: StageConfig = getattr(config, f"stage{stage}")
    clip = is_clip_model(model, stage)
    if hasattr(model, "clip_length"):  # a volumetric baseline trains on its own clip length in any stage
        settings = replace(settings, clip_length=model.clip_length)
    accumulation = config.grad_accumulation
    micro = settings.batch_size // (accumulation * world)
    size = model.image_size
    train_set = _dataset(
        train_sources, clip=clip, stage=settings, size=size, config=config, train=True,
        samples=max(1, settings.steps * settings.batch_size), seed=config.seed,
    )
    train_set.set_epoch(stage)
    # The validation samples are fixed (no augmentation, fixed seed): read them once per stage. None when
    # sparse annotation left no annotated validation slice: the stage then keeps its last weights.
    val_items = []
    if val_sources:
        val_set = _dataset(
            val_sources, clip=clip, stage=settings, size=size, config=config, train=False,
            samples=config.val_samples, seed=config.seed + 7919,
        )
        val_items = [val_set[i] for i in range(len(val_set))]
    groups = _parameter_groups(model, stage, settings.lr, settings.adapter_lr_scale)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    # The cosine follows whichever budget ends first: steps or, for a time-budgeted stage, max_seconds.
    budget = StageBudget(
        steps=settings.steps, max_seconds=settings.max_seconds, warmup_steps=settings.warmup_steps,
        seconds_before=state.get("seconds", 0.0) if state is not None else 0.0,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: budget.lr_factor(s))
    step_loss: nn.Module = _StepLoss(model, config, clip=clip).to(device)
    if world > 1:
        step_loss = DistributedDataParallel(step_loss)
    best_path = out_dir / "checkpoints" / f"best_stage{stage}.safetensors"
    # `best`: the best validation Dice of the weights this stage may end with, from `best_from`;
    # `own_best`: the best this stage's training reached.
    start, best, patience, best_from, own_best = 0, -1.0, 0, f"stage {stage}", -1.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, best, patience = state["step"], state["best"], state["patience"]
        best_from, own_best = state.get("best_from", best_from), state.get("own_best", best)
    else:
        torch.manual_seed(config.seed + 1000 * stage)
        incoming = result.kept or ("init_from" if config.init_from else None)
        if incoming and val_items:
            # Selection across stages: the weights this stage starts from stay unless its training beats
            # them on its own validation samples.
            best, best_from = float(validate(model, val_items, clip=clip, device=device).mean()), incoming
            if rank == 0:
                _save_weights(model, best_path)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
        else nullcontext()
    )
    loader = DataLoader(
        train_set,
        batch_size=micro,
        sampler=_StepIndices(start, settings.steps, accumulation, world, rank, micro),
        collate_fn=_collate,
        **loader_options(config.num_workers, device),  # unset: by the device (sam4em.training.feed)
    )
    batches = iter(loader)
    # A time-budgeted stage has no meaningful step total: show the count and the rate instead.
    total = settings.steps if settings.max_seconds is None else None
    bar = tqdm(total=total, initial=start, desc=f"stage {stage}", disable=not progress, leave=False)
    budget.start()
    timer = StepTimer()
    step = start
    model.train()

    def checkpoint_state() -> dict[str, Any]:
        return {
            "stage": stage,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "seconds": budget.elapsed(),
            "rng": torch.get_rng_state(),
            "best": best,
            "patience": patience,
            "best_from": best_from,
            "own_best": own_best,
            "scores": dict(result.best_scores),
            "kept": result.kept,
            "kept_score": result.kept_score,
        }

    while step < settings.steps:
        if interrupt.requested(stage, step):
            if rank == 0:
                save_checkpoint(out_dir / "checkpoints", checkpoint_state())
            bar.close()
            return False
        losses = torch.zeros(3)
        optimizer.zero_grad(set_to_none=True)
        timer.start()
        for a in range(accumulation):
            with timer.waiting():
                batch = next(batches)
            sync = a == accumulation - 1 or world == 1
            context = step_loss.no_sync() if (world > 1 and not sync) else nullcontext()
            with context, autocast:
                image, targets, valid = (batch[k].to(device, non_blocking=True) for k in ("image", "targets", "valid"))
                parts = step_loss(image, targets, valid)
            (parts[0] / accumulation).backward()
            losses += parts.detach().float().cpu() / accumulation
        if world > 1:
            dist.all_reduce(losses)
            losses /= world
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
        optimizer.step()
        scheduler.step()
        steps_per_s, data_wait = timer.finish()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[0]:.3f}")
        row: dict[str, Any] = {
            "stage": stage,
            "step": step,
            "loss": f"{losses[0]:.6f}",
            "loss_stage1": f"{losses[1]:.6f}",
            "loss_stage2": f"{losses[2]:.6f}",
            "lr": f"{optimizer.param_groups[0]['lr']:.3e}",
            "seconds": f"{budget.elapsed():.2f}",
            "steps_per_s": f"{steps_per_s:.3f}",
            "data_wait": f"{data_wait:.3f}",  # share of the step spent waiting for the batch
        }
        out_of_time = budget.out_of_time()
        if val_items and (step % config.val_every == 0 or step == settings.steps or out_of_time):
            dice = validate(model, val_items, clip=clip, device=device)
            model.train()
            row.update({f"val_dice_{n}": f"{d:.4f}" for n, d in zip(model.class_names, dice, strict=True)})
            row["val_dice_mean"] = f"{dice.mean():.4f}"
            own_best = max(own_best, float(dice.mean()))
            if dice.mean() > best:
                best, best_from, patience = float(dice.mean()), f"stage {stage}", 0
                if rank == 0:
                    _save_weights(model, best_path)
            else:
                patience += 1
        log.write(row)
        stop_early = config.early_stopping_patience is not None and patience >= config.early_stopping_patience
        if rank == 0 and (step % config.checkpoint_every == 0 or step == settings.steps):
            save_checkpoint(out_dir / "checkpoints", checkpoint_state())
        if stop_early or out_of_time:
            break
    bar.close()
    if world > 1:
        dist.barrier()
    if best_path.exists():
        # Model selection on the validation split: the next stage and the saved model use the best.
        model.load_state_dict(load_file(best_path), strict=True)
    if not val_items:  # nothing to select on: the stage's last weights, unscored
        best, own_best, best_from = float("nan"), float("nan"), f"stage {stage}"
    result.best_scores[stage] = own_best
    result.steps[stage] = step
    result.kept, result.kept_score = best_from, best
    if rank == 0:
        state_after = checkpoint_state()
        state_after["stage"], state_after["step"] = stage + 1, 0
        state_after["model"] = model.state_dict()
        save_checkpoint(out_dir / "checkpoints", state_after)
    return True


def _save_weights(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


class _StepIndices:
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


def _collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([it[key] for it in items]) for key in ("image", "targets", "valid")}


def _plots(out_dir: Path, model: nn.Module, config: TrainConfig, val_sources: list[VolumeSource], device: torch.device) -> None:
    from sam4em.evaluation.plots import plot_training_curves, plot_validation_overlay

    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_training_curves(out_dir / "metrics.csv", plots / "curves.png")
    if not val_sources:
        return
    clip = is_clip_model(model, max(config.stages))
    stage = getattr(config, f"stage{max(config.stages)}")
    clip_length = getattr(model, "clip_length", min(stage.clip_length, 4))
    samples = _dataset(
        val_sources, clip=clip, stage=replace(stage, clip_length=clip_length), size=model.image_size,
        config=config, train=False, samples=4, seed=config.seed + 7919,
    )
    plot_validation_overlay(model, samples, plots / "val_overlay.png", clip=clip, device=device)
