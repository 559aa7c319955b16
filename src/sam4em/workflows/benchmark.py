"""`sam4em benchmark`: SAM4EM, its ablations and the baselines, trained and tested on equal terms.

Every (dataset, method) pair is trained with the same wall-clock budget by the same trainer, then
segments the same held-out test crop and is scored by the same metrics. Each pair runs in a fresh
process, so its peak memory (max RSS) is its own.

Test data are never used for model selection: each run selects on a validation z-range of its
training volume. Splits:
- Lucchi++: train volume for training (last 15% of z for validation), test volume for testing.
- ISBI 2012: the 30 labelled slices split by z: 0-23 train (+ validation), 24-29 test.
- VNC: the 10 labelled slices split by z: 0-6 train (+ validation), 7-9 test.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.atomic import write_text_atomically
from sam4em.evaluation.metric_registry import score_keys
from sam4em.evaluation.results_file import write_json
from sam4em.training.methods import METHODS

DATASETS = ("lucchi_pp", "isbi2012", "vnc")
#: Exit status of a run process stopped by SIGINT/SIGTERM (as a shell reports Ctrl-C).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is trained and tested: files, class codes, z-ranges and the test crop."""

    name: str
    classes: str
    train_image: str
    train_labels: str
    train_z: tuple[int, int] | None
    test_image: str
    test_labels: str
    test_crop: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (z0, z1), (y0, y1), (x0, x1)
    voxel_size: tuple[float, float, float]
    clip_length: int
    val_fraction: float

    def training_volume(self, val_fraction: float | None = None) -> dict[str, Any]:
        """The ``volumes`` entry of a `sam4em train` config on this dataset's training part."""
        volume: dict[str, Any] = {"image": self.train_image, "labels": self.train_labels,
                                  "val_fraction": self.val_fraction if val_fraction is None else val_fraction}
        if self.train_z is not None:
            volume["z_range"] = list(self.train_z)
        return volume


@dataclass(frozen=True)
class Profile:
    name: str
    base: str
    pretrained: bool
    train_seconds: float  # per method and dataset, both stages together
    memory_share: float  # of that budget, what methods with memory spend in the 3D stage
    batch_size: int
    full_test: bool  # whole test volumes instead of crops
    note: str


PROFILES = {
    "quick": Profile(
        name="quick",
        base="cpu-small",
        pretrained=False,
        train_seconds=45.0,
        memory_share=0.25,
        batch_size=4,
        full_test=False,
        note="fits in ~30 minutes on 2 CPU cores: cpu-small from scratch (random initialisation), "
        "45 s of training per method and dataset, test crops",
    ),
    "full": Profile(
        name="full",
        base="sam2.1-hiera-base-plus",
        pretrained=True,
        train_seconds=1800.0,
        memory_share=0.25,
        batch_size=8,
        full_test=True,
        note="for a GPU: pretrained SAM2.1 Hiera-B+ with LoRA, 30 min of training per method and dataset, "
        "whole test volumes",
    ),
}


def dataset_plans(data_dir: Path, *, full_test: bool) -> dict[str, DatasetPlan]:
    lucchi, isbi, vnc = data_dir / "lucchi_pp", data_dir / "isbi2012" / "train", data_dir / "vnc" / "stack1_z00-09.h5"
    return {
        "lucchi_pp": DatasetPlan(
            name="lucchi_pp",
            classes="mito=255",
            train_image=str(lucchi / "train_image.tif"),
            train_labels=str(lucchi / "train_label.tif"),
            train_z=None,
            test_image=str(lucchi / "test_image.tif"),
            test_labels=str(lucchi / "test_label.tif"),
            test_crop=((0, 165), (0, 768), (0, 1024)) if full_test else ((80, 92), (192, 576), (320, 704)),
            voxel_size=(5.0, 5.0, 5.0),
            clip_length=4,
            val_fraction=0.15,
        ),
        "isbi2012": DatasetPlan(
            name="isbi2012",
            classes="membrane=0",
            train_image=str(isbi / "image"),
            train_labels=str(isbi / "label"),
            train_z=(0, 24),
            test_image=str(isbi / "image"),
            test_labels=str(isbi / "label"),
            test_crop=((24, 30), (0, 512), (0, 512)) if full_test else ((24, 30), (64, 448), (64, 448)),
            voxel_size=(50.0, 4.0, 4.0),
            clip_length=4,
            val_fraction=0.2,
        ),
        "vnc": DatasetPlan(
            name="vnc",
            classes="mito=191,synapse=223,glia=159",
            train_image=f"{vnc}:raw",
            train_labels=f"{vnc}:labels",
            train_z=(0, 7),
            test_image=f"{vnc}:raw",
            test_labels=f"{vnc}:labels",
            test_crop=((7, 10), (0, 1024), (0, 1024)) if full_test else ((7, 10), (256, 768), (256, 768)),
            voxel_size=(50.0, 4.6, 4.6),
            clip_length=2,
            val_fraction=0.3,  # 7 slices: 2 validation, a gap of one clip, 3 training
        ),
    }


def train_config(plan: DatasetPlan, method: str, profile: Profile) -> dict[str, Any]:
    """The training config of one run: equal wall-clock budget for every method."""
    with_memory = METHODS[method].has_memory
    stage1_seconds = profile.train_seconds * ((1 - profile.memory_share) if with_memory else 1.0)
    return {
        "method": method,
        "classes": plan.classes,
        "volumes": [plan.training_volume()],
        # Per class, as in every recorded round of these profiles: an --out folder whose finished runs are
        # skipped never mixes layouts (the learning curve's `-shared` rows measure the shared one).
        "model": {"base": profile.base, "pretrained": profile.pretrained, "shared_memory": False, "joint_detail": False},
        "stage1": {"steps": 1_000_000, "batch_size": profile.batch_size, "lr": 1e-3, "warmup_steps": 20,
                   "max_seconds": stage1_seconds},
        "stage2": {"steps": 1_000_000, "batch_size": 1, "lr": 2e-4, "warmup_steps": 5,
                   "clip_length": plan.clip_length, "max_seconds": profile.train_seconds - stage1_seconds},
        "foreground_fraction": 0.6,
        "val_every": 50,
        "val_samples": 8,
        "checkpoint_every": 100,
        "tensorboard": False,
    }


def segment_test_crop(
    plan: DatasetPlan, run_dir: Path, crop: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Segment `crop` ((z0, z1), (y0, y1), (x0, x1)) of the plan's test volume with the model in `run_dir`.

    Returns probabilities (C, Z, Y, X), the crop's labels (Z, Y, X) and the inference seconds. A 3D
    model is normalised with the whole test volume's percentiles; slice-wise models go through
    `segment_volume`, which normalises the crop itself.
    """
    from sam4em.data.normalize import percentile_normalize, volume_percentiles
    from sam4em.inference.segment import segment_volume
    from sam4em.io import open_volume, parse_path_key
    from sam4em.models import load_model
    from sam4em.models.unet import UNet3D

    model = load_model(run_dir)
    (z0, z1), (y0, y1), (x0, x1) = crop
    image_path, image_key = parse_path_key(plan.test_image)
    label_path, label_key = parse_path_key(plan.test_labels)
    with open_volume(image_path, key=image_key) as image_volume, open_volume(label_path, key=label_key) as label_volume:
        image = np.asarray(image_volume[z0:z1, y0:y1, x0:x1])
        labels = np.asarray(label_volume[z0:z1, y0:y1, x0:x1])
        bounds = volume_percentiles(image_volume)
    started = time.time()
    if isinstance(model, UNet3D):  # the type, not only info.is_volumetric: predict_volume is UNet3D's
        probs = model.predict_volume(percentile_normalize(image, bounds=bounds))
    else:
        probs = segment_volume(image, model, direction="both")
    return probs, labels, time.time() - started


def run_one(plan: DatasetPlan, method: str, profile: Profile, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Train, segment the test crop, evaluate. Runs in its own process (see `run_benchmark`).

    Raises KeyboardInterrupt when the training was stopped (its checkpoint is kept for the next run).
    """
    import torch

    from sam4em.data.class_mapping import ClassMapping
    from sam4em.evaluation.evaluate import evaluate_volumes
    from sam4em.training.config import config_from_dict
    from sam4em.training.trainer import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run_dir = out_dir / "runs" / plan.name / method
    config = config_from_dict(train_config(plan, method, profile))
    started = time.time()
    result = train(config, run_dir, resume=(run_dir / "checkpoints").exists(), progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt  # a stopped training must not be scored as if it had finished
    train_seconds = time.time() - started
    probs, labels, infer_seconds = segment_test_crop(plan, run_dir, plan.test_crop)
    mapping = ClassMapping.parse(plan.classes)
    scores = evaluate_volumes(
        probs, labels, classes=mapping.single_codes(), voxel_size=plan.voxel_size, chunk_slices=16
    )
    np.save(run_dir / "test_probs.npy", probs.astype(np.float16))
    return {
        "profile": profile.name,
        "dataset": plan.name,
        "method": method,
        "base": "monai-unet" if METHODS[method].from_scratch else profile.base,
        "weights": "pretrained" if profile.pretrained and not METHODS[method].from_scratch else "random init (from scratch)",
        "train_seconds": round(train_seconds, 1),
        "steps_stage1": result.steps.get(1, 0),
        "steps_stage2": result.steps.get(2, 0),
        "val_dice": round(max(result.best_scores.values()), 4),
        "test_slices": int(labels.shape[0]),
        "slices_per_second": round(labels.shape[0] / infer_seconds, 3),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "classes": {
            name: {k: _plain(v) for k, v in values.items()}  # every registered metric's scores
            for name, values in ((name, s.values) for name, s in scores.classes.items())
        },
    }


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (np.floating, float, int, np.integer)) else value


def _worker(plan: DatasetPlan, method: str, profile: Profile, out_dir: Path, result_file: Path, progress: bool) -> None:
    try:
        record = run_one(plan, method, profile, out_dir, progress)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)  # no traceback: the parent reports the interruption
    write_json(result_file, record, overwrite=True)


def run_in_process(context: Any, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
    """Run ``target(*args)`` in a fresh process; KeyboardInterrupt when it (or this process) was interrupted.

    Ctrl-C reaches both processes; the run saves its checkpoint and ends, and we wait for it. A child
    that was interrupted exits with `EXIT_INTERRUPTED` (or dies of SIGINT/SIGTERM); any other
    failure is a RuntimeError naming the run.
    """
    process = context.Process(target=target, args=args)
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGINT)  # also when only this process was signalled
        process.join(timeout=120)
        if process.is_alive():
            process.terminate()
            process.join()
        raise
    if process.exitcode in (EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark run {name} failed (exit {process.exitcode}); see the output above")


def run_benchmark(
    *,
    profile: str = "quick",
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "benchmark_out",
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Run every (dataset, method) pair, each in a fresh process; write results.csv/.md and plots.

    Finished pairs (their ``result.json`` exists) are not run again, so an interrupted benchmark
    continues where it stopped. Returns the path of ``results.md``. Raises KeyboardInterrupt when
    stopped (SIGINT/SIGTERM), after the running pair saved its training checkpoint.
    """
    from sam4em.workflows.demo import find_data_dir

    settings = PROFILES[profile]
    unknown = set(methods or []) - set(METHODS) or set(datasets or []) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown method or dataset {sorted(unknown)}; methods: {', '.join(METHODS)}; datasets: {', '.join(DATASETS)}")
    data = find_data_dir(data_dir, datasets or DATASETS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = dataset_plans(data, full_test=settings.full_test)
    print(f"sam4em benchmark, profile {profile}: {settings.note}", flush=True)
    context = multiprocessing.get_context("spawn")
    finished = {path: _finished(path, settings.name) for path in sorted(out.glob("runs/*/*/result.json"))}  # refused now, not after hours
    records = []
    started = time.time()
    for name in datasets or list(plans):
        for method in methods or list(METHODS):
            result_file = out / "runs" / name / method / "result.json"
            if not result_file.exists():
                result_file.parent.mkdir(parents=True, exist_ok=True)
                args = (plans[name], method, settings, out, result_file, progress)
                run_in_process(context, _worker, args, f"{name}/{method}")
            record = finished.get(result_file) or _finished(result_file, settings.name)
            records.append(record)
            mean_iou = np.mean([c["iou"] for c in record["classes"].values()])
            print(f"  {name:10s} {method:20s} IoU {mean_iou:.3f}  ({time.time() - started:.0f} s so far)", flush=True)
    # The report covers every finished pair in this folder, also those an earlier call with other
    # --methods or --datasets ran.
    chosen = {(r["dataset"], r["method"]) for r in records}
    records += [r for r in finished.values() if (r["dataset"], r["method"]) not in chosen]
    write_results(records, out, settings, data)
    return out / "results.md"


def _finished(result_file: Path, profile: str) -> dict[str, Any]:
    """A finished pair's record; one of another profile (other budgets and crops) is refused, not mixed in."""
    record: dict[str, Any] = json.loads(result_file.read_text())
    if record.get("profile", profile) != profile:  # records written before the profile was recorded: as they are
        raise ValueError(f"{result_file}: a run of the {record['profile']} profile; a {profile} benchmark needs "
                         "its own --out")
    return record


def write_results(records: list[dict[str, Any]], out: Path, profile: Profile, data_dir: Path) -> None:
    rows = []
    for record in records:
        for name, scores in record["classes"].items():
            rows.append({
                "dataset": record["dataset"], "class": name, "method": record["method"], "base": record["base"],
                "weights": record["weights"], **{k: scores.get(k) for k in score_keys()},
                "val_dice": record["val_dice"], "train_seconds": record["train_seconds"],
                "steps": f"{record['steps_stage1']}+{record['steps_stage2']}",
                "slices_per_second": record["slices_per_second"], "peak_memory_mb": record["peak_memory_mb"],
            })
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(out / "results.csv", table.getvalue())
    lines = [
        f"# sam4em benchmark ({profile.name} profile)",
        "",
        f"- {profile.note}.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; data: {data_dir}.",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}.",
        "- Model selection on a validation z-range of the training data; test crops never seen in training.",
        "",
        "| dataset | class | method | weights | IoU | Dice | HD95 (nm) | AP50 | mSA | VOI | flicker ratio | val Dice | train s | steps | slices/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['class']} | {r['method']} | {r['weights']} | {r['iou']:.3f} | {r['dice']:.3f} | "
            f"{r['hd95']:.0f} | {r['ap50']:.3f} | {r['msa']:.3f} | {r['voi']:.3f} | {r['flicker_ratio']:.2f} | "
            f"{r['val_dice']:.3f} | {r['train_seconds']:.0f} | {r['steps']} | {r['slices_per_second']:.2f} | {r['peak_memory_mb']:.0f} |"
        )
    write_text_atomically(out / "results.md", "\n".join(lines) + "\n")
    _bar_chart(rows, out / "iou.png")


def _bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list is touched

    groups = sorted({(r["dataset"], r["class"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(max(6, 1.6 * len(groups)), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = [next((r["iou"] for r in rows if (r["dataset"], r["class"]) == g and r["method"] == method), 0) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"{d}\n{c}" for d, c in groups])
    ax.set(ylabel="test IoU", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


