"""The run folder's guard: a new run never overwrites an old one, and a resume never mixes two runs.

A run writes its resolved config into ``RUN/config.yaml`` (section ``train``) when it starts.
``--resume`` rebuilds that config and compares it, field by field, with the one given now, and
refuses any difference naming the fields: a run whose seed, learning rate, model, data or stages
changed half-way would be neither the old run nor the new one, and its config.yaml would describe
neither. Only `RESUMABLE_KEYS` may change: fields that do not change a single number of the result.
The volumes' content is compared too (:mod:`sam4em.training.data_fingerprint`), not only their paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sam4em.atomic import remove_leftovers, write_text_atomically
from sam4em.fingerprint import mismatches
from sam4em.models.info import PER_CLASS_BEFORE
from sam4em.training.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from sam4em.training.config_error import ConfigChanged
from sam4em.training.data_fingerprint import check_same_data, write_data_fingerprint

# Data-loader processes (each sample is a function of seed, stage and index, whoever reads it) and
# TensorBoard logging (metrics.csv is written either way).
RESUMABLE_KEYS = frozenset({"num_workers", "tensorboard"})
# Fields added with a default that a run recorded before them did not have: what such a run used.
# (Unset, the detail head is now joint, and the memory shared on a base trained from scratch.)
RECORDED_BEFORE = {"model": PER_CLASS_BEFORE}
CONFIG_FILE = "config.yaml"


def check_run_dir(out_dir: Path, config: TrainConfig, *, resume: bool) -> None:
    """Refuse a file as run folder, a started run without `resume`, and a resume with another config.

    Writes nothing: it runs first, before the (slower) checks of data and model.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a folder; choose a new folder for the run")
    blocker = next((p for p in out_dir.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"--out {out_dir}: {blocker} is a file, not a folder; choose a run folder elsewhere")
    if not _started(out_dir):
        config_file = out_dir / CONFIG_FILE
        if config_file.exists() and not isinstance(_recorded(config_file), dict):
            raise ConfigError(f"--out {out_dir}: holds a {CONFIG_FILE} that is not a sam4em run's; choose a new folder")
    elif not resume:
        raise ConfigError(f"{out_dir}: holds a run already; pass --resume to continue it or choose a new --out")
    else:
        check_same_config(out_dir, config)
        check_same_data(out_dir, config.volumes)


def prepare_run_dir(out_dir: Path, config: TrainConfig, *, resume: bool) -> None:
    """`check_run_dir`, then write the resolved config of a run that has not started (no checkpoint yet:
    it starts from step 0 with this config, whatever an earlier attempt used), or clear a resumed run's
    leftover temporary files. Called by the process that holds the folder's claim."""
    check_run_dir(out_dir, config, resume=resume)
    if _started(out_dir):
        # A process killed while writing (SIGKILL: no clean-up runs) leaves its temporary file, as large
        # as a checkpoint. This run holds the folder now (`claim_output`), so none of them is being written.
        for folder in (out_dir, out_dir / "checkpoints", out_dir / "plots"):
            remove_leftovers(folder)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir / CONFIG_FILE
    write_text_atomically(config_file, yaml.safe_dump({"train": config_to_dict(config)}, sort_keys=False))
    write_data_fingerprint(out_dir, config.volumes)


def _started(out_dir: Path) -> bool:
    return (out_dir / "checkpoints").exists() or (out_dir / "model.safetensors").exists()


def check_same_config(out_dir: Path, config: TrainConfig) -> None:
    """Refuse, naming the differing fields, when `config` is not the config the run in `out_dir` used."""
    path = out_dir / CONFIG_FILE
    fix = f"start a new run with another --out, or delete {out_dir} to start this one over"
    recorded = _recorded(path)
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path}: missing, unreadable or without a `train` section, so the run to resume cannot be "
                          f"checked; {fix}")
    filled = _with_values_before(recorded)
    try:
        # Rebuilt, not compared raw: fields added to TrainConfig since the run started take their defaults,
        # or, where the default is not what the run used, `RECORDED_BEFORE`.
        before = config_to_dict(config_from_dict(filled))
    except ConfigError as error:
        raise ConfigError(f"{path}: the recorded config is not valid any more ({error}); {fix}") from None
    changed = [key for key in mismatches(_flatten(before), _flatten(config_to_dict(config))) if key not in RESUMABLE_KEYS]
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        # Values the run used but config.yaml does not show (it predates the field): say them.
        shown_in_record = _flatten(recorded)
        implied = [f"--set {key}={str(value).lower()}" for key, value in _flatten(filled).items()
                   if key in changed and key not in shown_in_record]
        own = f"the run's own values (recorded in {path})"
        if implied:
            own += f" and {' '.join(implied)}, as the run used ({path} predates them),"
        raise ConfigChanged(f"{out_dir}: --resume with a config that differs from the run's in {shown}; resume with "
                            f"{own} or {fix}", changed)


def _with_values_before(recorded: dict[str, Any]) -> dict[str, Any]:
    """`recorded` with the `RECORDED_BEFORE` values of the fields it lacks."""
    filled = dict(recorded)
    for section, values in RECORDED_BEFORE.items():
        given = filled.get(section, {})
        if isinstance(given, dict):  # anything else is refused as the config it is
            filled[section] = {**values, **given}
    return filled


def _recorded(path: Path) -> Any:
    """The `train` section of a run's config.yaml; None when there is none or it cannot be read."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return document.get("train") if isinstance(document, dict) else None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'stage1.lr': ..., 'volumes[0].image': ...}: the leaves of a plain config by their dotted path."""
    if isinstance(value, dict):
        items = {f"{prefix}.{k}" if prefix else str(k): v for k, v in value.items()}
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = {f"{prefix}[{i}]": v for i, v in enumerate(value)}
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items.items():
        flat.update(_flatten(item, key))
    return flat
