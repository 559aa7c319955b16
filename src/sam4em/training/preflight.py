"""Everything about a training run that can be checked before it trains, checked before it trains.

`check_splits` checks the train/validation split of every volume against the depth every stage
will sample (1 slice in 2D, `clip_length` slices per clip), `check_batches` the batch arithmetic of
every stage. The trainer runs both, after opening every volume, before its first step: a config
that would fail in stage 2 fails before stage 1 has spent hours, with one line naming the volume,
the numbers and the fix.
"""

from __future__ import annotations

import math
import warnings

from sam4em.data.samples import VolumeSource
from sam4em.training.config import ConfigError, TrainConfig
from sam4em.training.methods import METHODS


def stage_depths(config: TrainConfig) -> dict[int, int]:
    """Slices per training sample of each stage that runs: 1 for slices, K for clips of K slices.

    Stage 2 trains on clips; the volumetric U-Net (``unet3d``) trains on clips in every stage.
    """
    clips_always = METHODS[config.method].volumetric
    return {stage: config.stage2.clip_length if (stage == 2 or clips_always) else 1 for stage in config.stages_to_run}


def check_splits(config: TrainConfig, train: list[VolumeSource], val: list[VolumeSource]) -> None:
    """Every training and validation source holds at least one sample of every stage that runs.

    Sources of one volume share a `name`; their z-ranges are the two parts of its split. Raises `ConfigError`.
    """
    spans: dict[str, list[int]] = {}
    for source in (*train, *val):
        assert source.z_range is not None, "the trainer's sources always carry their z-range"
        low, high = spans.setdefault(source.name, [source.z_range[0], source.z_range[1]])
        spans[source.name] = [min(low, source.z_range[0]), max(high, source.z_range[1])]
    for stage, depth in stage_depths(config).items():
        for role, sources in (("training", train), ("validation", val)):
            for source in sources:
                assert source.z_range is not None
                slices = source.z_range[1] - source.z_range[0]
                if slices >= depth:
                    continue
                total = spans[source.name][1] - spans[source.name][0]
                fix = (
                    f"raise its val_fraction to {math.ceil(depth * 100 / total) / 100}"
                    if role == "validation"
                    else "lower its val_fraction, or give it a z_range with more slices"
                )
                raise ConfigError(
                    f"{source.name} ({source.image_path}): stage {stage} samples clips of {depth} slices but its "
                    f"{role} part has {slices} of its {total} slices (after the split and the gap between the parts); "
                    f"{fix}, or lower stage2.clip_length"
                )


def check_batches(config: TrainConfig, world: int) -> None:
    """Every stage's batch splits evenly into gradient-accumulation rounds on every process."""
    for stage in config.stages_to_run:
        batch = getattr(config, f"stage{stage}").batch_size
        if batch % (config.grad_accumulation * world):
            raise ConfigError(
                f"stage{stage}.batch_size {batch} must be divisible by grad_accumulation x processes "
                f"({config.grad_accumulation} x {world}); change stage{stage}.batch_size or grad_accumulation"
            )


def warn_untrained_start(config: TrainConfig) -> None:
    """Stage 2 alone, without `init_from`, starts the parts stage 1 trains (prompt generator, adapter,
    decoders) from their initialisation: allowed (an ablation), but rarely what was meant."""
    if config.stages_to_run == [2] and config.init_from is None:
        warnings.warn(
            "stages: [2] without init_from: the prompt generator and decoders start untrained (stage 1 trains them); "
            "set init_from to a run that finished stage 1, or run stages [1, 2]",
            UserWarning,
            stacklevel=2,
        )
