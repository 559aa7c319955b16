"""What the napari widgets run, without Qt: layer data in, layer data out, through the library.

Layers hold (Z, Y, X) or (Y, X) arrays (NumPy, dask or zarr) and a scale, read here as the voxel
size in nm. Every job streams the layer into a Zarr volume slice by slice and calls the same library
function as the command line (``segment_to_file``, ``train``, ``evaluate_volumes``,
``measure_objects``), so a result in the viewer is the result of the CLI on the same data.
Layer data tuples are ``(data, kwargs, layer_type)``, as napari readers return them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam4em.io import VolumeError, create_volume, open_volume
from sam4em.io.output_record import RUN_RECORD

if TYPE_CHECKING:  # the library (torch) is imported only when a job runs
    from sam4em.inference.options import SegmentOptions

LayerData = tuple[Any, dict[str, Any], str]
#: Results up to this many voxels are loaded into memory (editable layers); larger ones stay lazy on disk.
IN_MEMORY_VOXELS = 2**28


def voxel_size(scale: Sequence[float]) -> tuple[float, float, float]:
    """(z, y, x) in nm from a layer's scale; a 2D layer is one slice of depth 1."""
    values = [float(s) for s in scale]
    return (1.0, values[0], values[1]) if len(values) == 2 else (values[-3], values[-2], values[-1])


def as_volume_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    if len(shape) != 3:
        raise ValueError(
            f"layer of shape {tuple(shape)}: sam4em works on (Z, Y, X) or (Y, X) layers (pick one channel)"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def write_layer(data: Any, scale: Sequence[float], path: Path) -> Path:
    """Stream layer ``data`` into a new Zarr volume at ``path``, one slice in memory at a time."""
    shape = as_volume_shape(data.shape)
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"layer of dtype {dtype}: sam4em needs grey values or labels (integers or floats)")
    with create_volume(path, shape, dtype, voxel_size=voxel_size(scale)) as out:
        for z in range(shape[0]):
            out[z] = np.asarray(data[z] if len(data.shape) == 3 else data)
    return path


def _result(path: Path, key: str | None, squeeze: bool) -> Any:
    """A result array: in memory when small, else the lazy volume (the folder is then kept)."""
    volume = open_volume(path, key)
    if np.prod(volume.shape) > IN_MEMORY_VOXELS:
        return volume
    with volume:
        data = volume[:]
    return data[0] if squeeze else data


def segment_layer(
    data: Any,
    scale: Sequence[float],
    model: Any,
    workdir: Path,
    options: SegmentOptions,
    *,
    name: str,
    progress: Callable[[int, int], None] | None = None,
    stop: Any = None,
) -> list[LayerData]:
    """Segment a layer with ``segment_to_file`` and return the result layers at the layer's scale:
    one labels layer, or one image layer per class for probabilities."""
    from sam4em.inference.streaming import segment_to_file

    squeeze = len(data.shape) == 2
    source = write_layer(data, scale, workdir / "input.zarr")
    out = segment_to_file(source, workdir / "output.zarr", model, options, progress=progress, stop=stop)
    output_type = options.output_type
    layer_scale = tuple(float(s) for s in scale)
    with open_volume(out, _first_key(out) if output_type == "probs" else output_type) as first:
        names = _class_names(first.attrs)
    if output_type == "probs":
        return [
            (_result(out, cls, squeeze), {"name": f"{name} {cls}", "scale": layer_scale,
                                         "colormap": "magma", "blending": "additive"}, "image")
            for cls in names
        ]  # fmt: skip
    kwargs: dict[str, Any] = {"name": f"{name} {output_type}", "scale": layer_scale}
    if output_type == "labels":
        kwargs["features"] = {"index": list(range(len(names) + 1)), "class": ["background", *names]}
    return [(_result(out, output_type, squeeze), kwargs, "labels")]


def _first_key(path: Path) -> str:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return sorted(name for name, _ in group.members())[0]


def _class_names(attrs: Any) -> list[str]:
    return [str(n) for n in json.loads(str(attrs[RUN_RECORD]))["class_names"]]


def default_classes(labels: Any) -> str:
    """A class mapping for the nonzero codes of a labels layer: ``class1=1,class2=2,...``."""
    codes: set[int] = set()
    for z in range(labels.shape[0] if len(labels.shape) == 3 else 1):
        codes.update(int(v) for v in np.unique(np.asarray(labels[z] if len(labels.shape) == 3 else labels)))
    codes.discard(0)
    if not codes:
        raise ValueError("the labels layer is empty: paint some objects first")
    return ",".join(f"class{c}={c}" for c in sorted(codes))


def train_from_layers(
    image: Any,
    labels: Any,
    scale: Sequence[float],
    run_dir: Path,
    *,
    classes: str,
    base: str,
    stage1_steps: int,
    stage2_steps: int,
    minutes: float = 0.0,
    batch_size: int = 2,
    val_fraction: float = 0.25,
    device: str | None = None,
    sparse: bool = False,
    resume: bool = False,
    should_stop: Callable[[int, int], bool] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Any:
    """Train a normal sam4em run in ``run_dir`` on an image layer and its labels layer.

    The layers are saved to ``run_dir/data/`` first (a resume reuses the saved copies, so it trains on
    exactly the same data). ``sparse``: only slices with painted labels count as annotated (the
    others give no loss). Stage 2 (3D memory) runs when ``stage2_steps`` > 0; ``minutes`` > 0 also
    ends each stage after that much time (its best weights are kept). ``progress(stage,
    step, total)`` is called before each step; ``should_stop`` stops at a step boundary with a checkpoint.
    """
    from sam4em.training.config import config_from_dict
    from sam4em.training.trainer import train

    volume = _saved_training_volume(image, labels, scale, run_dir, resume=resume, sparse=sparse)
    volume["val_fraction"] = val_fraction
    stages = [1, 2] if stage2_steps > 0 else [1]
    totals = {1: stage1_steps, 2: stage2_steps}
    budget = minutes * 60 if minutes > 0 else None
    config = config_from_dict(
        {
            "classes": classes,
            "volumes": [volume],
            "model": {"base": base},
            "stages": stages,
            "stage1": {
                "steps": stage1_steps,
                "batch_size": batch_size,
                "warmup_steps": max(1, stage1_steps // 10),
                "max_seconds": budget,
            },
            "stage2": {
                "steps": max(stage2_steps, 1),
                "batch_size": 1,
                "warmup_steps": 1,
                "clip_length": 3,
                "max_seconds": budget,
            },
            "val_every": max(1, min(stage1_steps, 25) // 2),
            "val_samples": 4,
            "checkpoint_every": max(1, min(stage1_steps, 25) // 2),
            "tensorboard": False,
            "device": device,
        }
    )

    def stop_or_report(stage: int, step: int) -> bool:
        if progress is not None:
            progress(stage, step, totals[stage])
        return should_stop is not None and should_stop(stage, step)

    return train(config, run_dir, resume=resume, progress=False, should_stop=stop_or_report)


def _saved_training_volume(
    image: Any, labels: Any, scale: Sequence[float], run_dir: Path, *, resume: bool, sparse: bool
) -> dict[str, Any]:
    """The layers saved to ``run_dir/data/`` (a resume reuses the saved copies), as a config volume."""
    if as_volume_shape(image.shape) != as_volume_shape(labels.shape):
        raise ValueError(f"image {tuple(image.shape)} and labels {tuple(labels.shape)} differ in shape")
    data = run_dir / "data"
    paths = {"image": data / "image.zarr", "labels": data / "labels.zarr"}
    if not (resume and all(p.exists() for p in paths.values())):
        if paths["image"].exists() and not resume:
            raise VolumeError(f"{run_dir}: already holds a run (tick resume, or pick a new folder)")
        data.mkdir(parents=True, exist_ok=True)
        write_layer(image, scale, paths["image"])
        write_layer(labels, scale, paths["labels"])
    volume: dict[str, Any] = {"image": str(paths["image"]), "labels": str(paths["labels"])}
    if sparse:
        with open_volume(paths["labels"]) as saved:
            volume["labelled_slices"] = [z for z in range(saved.shape[0]) if saved[z].any()]
    return volume


def latest_validation(run_dir: Path) -> tuple[int, int, float] | None:
    """(stage, step, mean validation Dice) of the last validated step in ``run_dir/metrics.csv``."""
    path = run_dir / "metrics.csv"
    try:
        with path.open(newline="") as stream:
            rows = [r for r in csv.DictReader(stream) if r.get("val_dice_mean")]
    except (OSError, csv.Error):
        return None
    if not rows:
        return None
    return int(rows[-1]["stage"]), int(rows[-1]["step"]), float(rows[-1]["val_dice_mean"])
