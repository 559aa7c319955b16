"""`sam4em demo`: the whole workflow on real data in about ten minutes on a laptop CPU.

Trains `cpu-small` from scratch (random initialisation: no pretrained SAM2 weights are needed) on
Lucchi++ mitochondria, segments a crop of the held-out test volume slice by slice with memory,
evaluates it against the expert labels and writes a short report with an overlay image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam4em.atomic import write_text_atomically
from sam4em.datasets import DatasetNotFoundError, get_dataset, resolve_data_dir, shared_data_dir
from sam4em.evaluation import evaluate_volumes, format_table
from sam4em.evaluation.results_file import write_json
from sam4em.inference.segment import segment_volume
from sam4em.models import load_model
from sam4em.training.config import ConfigError, config_from_dict
from sam4em.training.config_error import ConfigChanged
from sam4em.training.plots import save_overlay_grid
from sam4em.training.trainer import train

# A test crop small enough to segment in about a minute on two cores: 16 slices, 384 x 384.
TEST_CROP = (slice(72, 88), slice(192, 576), slice(320, 704))


def find_data_dir(data_dir: str | os.PathLike[str] | None, datasets: Sequence[str] = ("lucchi_pp",)) -> Path:
    """The folder holding ``datasets``: `data_dir`, else $SAM4EM_DATA_DIR, else ../shared/data.

    A folder that is given (argument or environment) is used or refused, never replaced by the
    fallback: a typo must not make a long run read other data than asked for.
    """
    root = resolve_data_dir(data_dir) or shared_data_dir()
    if root is None:
        raise DatasetNotFoundError(
            f"no data folder: pass --data-dir or set $SAM4EM_DATA_DIR to a folder holding {', '.join(datasets)} "
            "(see `sam4em datasets` for where to get them)"
        )
    if not root.is_dir():
        given = "--data-dir" if data_dir is not None else "$SAM4EM_DATA_DIR"
        raise DatasetNotFoundError(f"{root}: no such folder (given as {given}; check the path)")
    for name in datasets:
        get_dataset(name, data_dir=root)  # raises naming the missing files
    return root


def demo_config(data_dir: Path, minutes: float) -> dict:
    lucchi = data_dir / "lucchi_pp"
    budget = minutes * 60
    return {
        "method": "sam4em",
        "classes": "mito=255",
        "volumes": [{"image": str(lucchi / "train_image.tif"), "labels": str(lucchi / "train_label.tif")}],
        "model": {"base": "cpu-small", "pretrained": False},
        "stages": [1, 2],
        "stage1": {"steps": 100_000, "batch_size": 4, "lr": 1e-3, "warmup_steps": 50, "max_seconds": 0.8 * budget},
        "stage2": {"steps": 100_000, "batch_size": 1, "lr": 2e-4, "warmup_steps": 10, "clip_length": 4,
                   "max_seconds": 0.2 * budget},
        "val_every": 100,
        "val_samples": 16,
        "checkpoint_every": 100,
    }


def run_demo(
    *,
    out_dir: str | os.PathLike[str] = "demo_out",
    data_dir: str | None = None,
    minutes: float = 8.0,
    progress: bool = True,
) -> Path:
    """Train, segment, evaluate; returns the path of ``report.md`` in `out_dir`.

    Raises KeyboardInterrupt after SIGINT/SIGTERM stopped the training (its checkpoint is kept:
    running the demo again continues it).
    """
    data = find_data_dir(data_dir)
    out = Path(out_dir)
    run_dir = out / "run"
    started = time.time()
    config = config_from_dict(demo_config(data, minutes))
    resume = (run_dir / "checkpoints").exists()
    try:
        result = train(config, run_dir, resume=resume, progress=progress)
    except ConfigChanged as changed:
        # The demo continues its own run: one made with another --minutes (or data folder) cannot be continued.
        raise ConfigError(f"{out}: holds a demo run made with other settings (they differ in {', '.join(changed.fields)}); "
                          "rerun with the --minutes and --data-dir it was made with, or choose another --out") from None
    if result.interrupted:
        raise KeyboardInterrupt
    train_seconds = time.time() - started

    lucchi = get_dataset("lucchi_pp", data_dir=data)
    with lucchi.open("test", "image") as image_volume, lucchi.open("test", "label") as label_volume:
        image = np.asarray(image_volume[TEST_CROP])
        labels = np.asarray(label_volume[TEST_CROP])
    model = load_model(run_dir)
    started = time.time()
    probs = segment_volume(image, model, direction="both")
    seconds_per_slice = (time.time() - started) / image.shape[0]
    results = evaluate_volumes(probs, labels, classes={"mito": 255}, voxel_size=(5.0, 5.0, 5.0))
    write_json(out / "metrics.json", results.as_dict(), overwrite=True)
    middle = image.shape[0] // 2
    save_overlay_grid(
        [image[middle] / 255.0],
        [(labels[middle] == 255)[None]],
        [probs[:, middle] > 0.5],
        out / "overlay.png",
        titles=[f"test slice {TEST_CROP[0].start + middle}"],
    )
    report = out / "report.md"
    scores = results.classes["mito"].values
    write_text_atomically(
        report,
        "# sam4em demo: Lucchi++ mitochondria\n\n"
        f"- Model: `cpu-small` trained from scratch (random initialisation, no pretrained SAM2 weights) for "
        f"{train_seconds / 60:.1f} min on this machine; steps: stage 1 {result.steps.get(1, 0)}, stage 2 {result.steps.get(2, 0)}.\n"
        f"- Best validation Dice (held-out z-range of the training volume): "
        + ", ".join(f"stage {s} {v:.3f}" for s, v in result.best_scores.items())
        + "\n"
        f"- Test crop: slices {TEST_CROP[0].start}-{TEST_CROP[0].stop - 1}, y {TEST_CROP[1].start}-{TEST_CROP[1].stop - 1}, "
        f"x {TEST_CROP[2].start}-{TEST_CROP[2].stop - 1} of the Lucchi++ test volume; both z-directions with memory; "
        f"{seconds_per_slice:.2f} s per slice.\n"
        f"- Test foreground IoU {scores['iou']:.3f}, Dice {scores['dice']:.3f}, AP50 {scores['ap50']:.3f}.\n\n"
        "```\n" + format_table(results) + "\n```\n\n![overlay](overlay.png)\n"
    )
    return report
