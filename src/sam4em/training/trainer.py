"""`train(config, out_dir)`: dual-stage fine-tuning, resumable, data-parallel under torchrun.

Stage 1 (2D) trains on single-slice crops: LoRA, enhancer, prompt generator and both decoders.
Stage 2 (3D) trains on clips of K consecutive slices in z order, each clip from an empty memory and
without any ground truth as prompt; it trains the memory encoder and memory attention, and the rest
at a lower rate. Every stage selects its best weights on the validation split (never the test
volume) and the next stage starts from them (`sam4em.training.selection`). Everything that can be
checked before training is checked first (`sam4em.training.preflight`), and the run folder holds a
usable model after every stage.

A stage runs in named steps (`sam4em.training.stage.StageRunner`); everything a step does is a
function of (seed, stage, step), so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sam4em.claim import claim_output
from sam4em.data.class_mapping import ClassMapping
from sam4em.data.samples import VolumeSource
from sam4em.models import SAM4EM, load_model, save_model
from sam4em.models.checkpoint_files import CheckpointError
from sam4em.models.class_transfer import state_for_classes
from sam4em.models.weights import load_state_strict
from sam4em.training.checkpoint import load_checkpoint
from sam4em.training.config import ConfigError, TrainConfig, validate
from sam4em.training.distributed import init_distributed, training_device
from sam4em.training.method_builder import TrainableModel, build_method, is_clip_model
from sam4em.training.plots import plot_training_curves, plot_validation_overlay
from sam4em.training.preflight import check_batches, check_splits, warn_untrained_start
from sam4em.training.run_folder import check_run_dir, prepare_run_dir
from sam4em.training.run_log import Interrupt, MetricsLog
from sam4em.training.selection import RunResult, run_record
from sam4em.training.stage import VAL_SEED_OFFSET, RunContext, StageRunner
from sam4em.training.volumes import stage_dataset, volume_sources

__all__ = ["RunResult", "train", "volume_sources"]


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int, int], bool] | None = None,
) -> RunResult:
    """Train `config.method` through `config.stages_to_run` into `out_dir` (see the module docstring).

    Writes ``config.yaml``, ``metrics.csv``, ``checkpoints/``, ``plots/`` and, after every stage, the
    best model so far as ``model.safetensors``. Returns with ``interrupted=True`` after SIGINT/SIGTERM,
    having saved a checkpoint that ``resume=True`` continues from (with the same config: any other is
    refused); `should_stop(stage, step)` requests the same from code (a GUI's stop button, a job
    scheduler's time limit). `config` is checked first (`validate`), however it was made.
    """
    validate(config)
    out_dir = Path(out_dir)
    rank, world = init_distributed()
    device = training_device(config, rank)
    main = rank == 0
    # One run writes a run folder at a time: a second (say a --resume started twice) is refused.
    with claim_output(out_dir) if main else nullcontext():
        model, mapping, train_sources, val_sources = _checked_model(config, out_dir, resume=resume, world=world,
                                                                    device=device)
        if main:
            prepare_run_dir(out_dir, config, resume=resume)
        if world > 1:
            dist.barrier()
        checkpoint = load_checkpoint(out_dir / "checkpoints") if resume else None
        result = _result_so_far(out_dir, model, checkpoint)
        log = MetricsLog(out_dir, mapping.names, enabled=main, tensorboard=config.tensorboard)
        if checkpoint is None:
            # Rows of a run killed before its first checkpoint are redone from step 0: drop them, not repeat them.
            log.truncate_after(0, 0)
        run = RunContext(
            model=model, class_names=tuple(mapping.names), config=config, train_sources=train_sources,
            val_sources=val_sources, out_dir=out_dir, log=log, result=result, interrupt=Interrupt(should_stop),
            device=device, rank=rank, world=world, progress=progress and main,
        )
        started = time.time()
        try:
            with run.interrupt.installed():
                if not _run_stages(run, checkpoint):
                    result.interrupted = True
                    return result
        finally:
            log.close()
        result.seconds = time.time() - started
        if main:
            save_model(model, out_dir, extra_sections=run_record(result, config, config.stages_to_run[-1]))
            _save_plots(out_dir, model, config, val_sources, device)
        if world > 1:
            dist.barrier()
        return result


def _checked_model(
    config: TrainConfig, out_dir: Path, *, resume: bool, world: int, device: torch.device
) -> tuple[TrainableModel, ClassMapping, list[VolumeSource], list[VolumeSource]]:
    """The untrained model and the data of a run, after every check that can fail before training.

    Whatever can fail fails now, before the run folder is touched: the folder itself, data, the splits
    and clip lengths of every stage, batch arithmetic, the model.
    """
    check_run_dir(out_dir, config, resume=resume)  # on every process: all refuse together, none waits
    mapping = ClassMapping.parse(config.classes)
    train_sources, val_sources = volume_sources(config, mapping)
    check_splits(config, train_sources, val_sources)
    check_batches(config, world)
    warn_untrained_start(config)
    source = load_model(config.init_from) if config.init_from else None
    model = build_method(config, mapping.names, starts_from=source).to(device)
    if source is not None:
        state = source.state_dict()
        if isinstance(model, SAM4EM) and isinstance(source, SAM4EM):
            # Other classes (a generalist): per-class prompts by class name, every other weight as trained.
            try:
                state = state_for_classes(state, source.info.class_names, model)
            except ValueError as error:
                raise ConfigError(f"init_from {config.init_from}: {error}") from None
        _load_weights(model, state, f"init_from {config.init_from}")
    return model, mapping, train_sources, val_sources


def _result_so_far(out_dir: Path, model: TrainableModel, checkpoint: dict[str, Any] | None) -> RunResult:
    """A new run's empty result, or a resumed run's with the checkpoint's weights loaded into `model`."""
    result = RunResult(run_dir=out_dir)
    if checkpoint is not None:
        _load_weights(model, checkpoint["model"], str(out_dir / "checkpoints"))
        result.best_scores = dict(checkpoint.get("scores", {}))
        result.kept, result.kept_score = checkpoint.get("kept", ""), checkpoint.get("kept_score", float("nan"))
    return result


def _run_stages(run: RunContext, checkpoint: dict[str, Any] | None) -> bool:
    """Run the config's stages from where `checkpoint` left off; False when interrupted."""
    config = run.config
    stages = config.stages_to_run
    for stage in stages:
        if checkpoint is not None and checkpoint["stage"] > stage:
            continue  # finished before the interruption; its best weights are in the checkpoint
        state = None
        if checkpoint is not None and checkpoint["stage"] == stage:
            run.log.truncate_after(stage, checkpoint["step"])
            # At step 0 the stage had not begun (the checkpoint between two stages): start it afresh.
            state = checkpoint if checkpoint["step"] > 0 else None
        finished = StageRunner(run, stage, state).run()
        checkpoint = None
        if not finished:
            return False
        if run.rank == 0 and stage != stages[-1]:
            # A run whose next stage fails still leaves a usable model.
            save_model(run.model, run.out_dir, extra_sections=run_record(run.result, config, stage))
    return True


def _load_weights(model: TrainableModel, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        load_state_strict(model, state, source=source)
    except CheckpointError as error:
        raise ConfigError(f"{error}; use a config with the same model and classes") from None


def _save_plots(
    out_dir: Path, model: TrainableModel, config: TrainConfig, val_sources: list[VolumeSource], device: torch.device
) -> None:
    """RUN/plots/: the training curves and, with validation samples, predictions on a few of them."""
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_training_curves(out_dir / "metrics.csv", plots / "curves.png")
    if not val_sources:
        return
    last = max(config.stages_to_run)
    clip = is_clip_model(model, last)
    stage = config.stage1 if last == 1 else config.stage2
    clip_length = model.info.clip_length or min(stage.clip_length, 4)
    samples = stage_dataset(
        val_sources, clip=clip, stage=replace(stage, clip_length=clip_length), size=model.image_size,
        config=config, train=False, samples=4, seed=config.seed + VAL_SEED_OFFSET,
    )
    items = [samples[i] for i in range(len(samples))]
    plot_validation_overlay(model, items, plots / "val_overlay.png", clip=clip, device=device)
