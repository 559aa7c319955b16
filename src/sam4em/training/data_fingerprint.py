"""What a run trained on, by content: so that ``--resume`` refuses a volume replaced at the same path.

`check_same_config` compares the config, which names the volumes by path only; a file rewritten in
place (new labels, another crop) would pass it and mix two runs. When a run starts, the shape, dtype
and a digest of three slices (first, middle, last) of every image and label volume go into
``RUN/data_fingerprint.json``; a resume recomputes them and refuses any difference, naming the
volume. Three slices cost milliseconds on volumes of any size and catch every realistic replacement
(a full digest would read terabytes); a change confined to other slices goes unnoticed, as stated.
Runs started before this file existed have none and are resumed as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sam4em.atomic import write_text_atomically
from sam4em.fingerprint import digest_volume, mismatches
from sam4em.io import open_volume
from sam4em.training.config_error import ConfigError

FINGERPRINT_FILE = "data_fingerprint.json"


def volume_fingerprint(path: str, key: str | None, *, allow_missing_chunks: bool = False) -> dict[str, Any]:
    """Shape, dtype and the SHA-256 of the first, middle and last slices of a (Z, Y, X) volume."""
    with open_volume(path, key, allow_missing_chunks=allow_missing_chunks) as volume:
        return digest_volume(volume)


def data_fingerprint(volumes: list[Any]) -> dict[str, dict[str, Any]]:
    """``{"volumes[0].image": fingerprint, "volumes[0].labels": ...}`` of a config's `volumes`."""
    found: dict[str, dict[str, Any]] = {}
    for i, volume in enumerate(volumes):
        found[f"volumes[{i}].image"] = volume_fingerprint(volume.image, volume.image_key)
        found[f"volumes[{i}].labels"] = volume_fingerprint(
            volume.labels, volume.labels_key, allow_missing_chunks=volume.allow_missing_chunks
        )
    return found


def write_data_fingerprint(out_dir: Path, volumes: list[Any]) -> None:
    """Record the fingerprint of `volumes` in the run folder (atomically)."""
    write_text_atomically(out_dir / FINGERPRINT_FILE, json.dumps(data_fingerprint(volumes), indent=1))


def check_same_data(out_dir: Path, volumes: list[Any]) -> None:
    """Refuse a resume whose volumes differ in content from those the run started with."""
    path = out_dir / FINGERPRINT_FILE
    if not path.exists():
        return  # a run started before fingerprints were recorded
    recorded = json.loads(path.read_text())
    changed = mismatches(recorded, data_fingerprint(volumes))
    if changed:
        raise ConfigError(
            f"{out_dir}: --resume with training data whose content differs from the run's in {', '.join(changed)} "
            f"(recorded in {path}); resume with the run's own data, or start a new run with another --out"
        )
