"""`sam4em benchmark --profile learning-curve`: Dice against the number of annotated training slices.

For each dataset and each count N of annotated training slices, the methods are trained in turn
(interleaved, so that on a shared machine they see similar load) with the same fine-tuning wall time,
then segment the same test crop. Methods:

- ``unet2d``: the MONAI 2D U-Net, from scratch.
- ``sam4em-scratch``: SAM4EM on the from-scratch CPU base (every weight trains).
- ``sam4em-em``: SAM4EM on the EM-pretrained encoder (`sam4em pretrain`), LoRA as with Meta's weights.
- ``sam4em-em-full``: the same encoder, every weight fine-tuned.
- ``sam4em-gen`` / ``sam4em-gen-full``: the same two, on a supervised "generalist" encoder instead:
  SAM4EM trained on the *other* datasets' annotated training parts (`GENERALIST_SOURCES`), its encoder
  exported (`sam4em export-encoder`). It never sees the target dataset.
- ``sam4em-em-llrd``: ``sam4em-em-full`` with layer-wise rate decay 0.75 for the encoder (as MAE fine-tunes).
- ``sam4em-gen-init``: the whole generalist model, not only its encoder (``init_from`` its last part's
  run: decoders, enhancer, detail head; prompts of a class of the same name), every weight trained. The
  generalist trains the 2D stage only, so its memory is still at its initialisation.
- ``sam4em-scratch-shared`` / ``sam4em-gen-init-shared``: the same two with the memory and the detail
  head shared by the classes (``model.shared_memory`` and ``model.joint_detail``).
- ``sam4em-scratch-joint`` / ``sam4em-gen-init-joint``: the ``-shared`` two with the decoders, too,
  run once per window for all classes (``model.joint_decoder``).

Annotation: N evenly spaced slices of the training part (`labelled_slices`), plus one annotated slice
in the middle of the validation block for model selection (the same for every method and N); "all"
annotates every training and validation slice. The EM-pretrained encoder is made once, first (its time
is reported separately: a lab pays it once), from unlabelled material only: the Lucchi++ training
image, the ISBI 2012 images, VNC stack 1's training slices (0-6) and VNC stack 2; never a test slice.
A generalist encoder is made once per target dataset, the same way, before that dataset's first run.

Each run is its own process; its result.json is written when it ends, and the table, CSV and plot are
rewritten after every run, so an interrupted benchmark keeps what finished and a re-run skips it.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.atomic import write_text_atomically
from sam4em.models.encoder_weights import is_encoder_folder
from sam4em.training.methods import METHODS
from sam4em.workflows.benchmark import DatasetPlan, dataset_plans, run_in_process, segment_test_crop

CURVE_METHODS: dict[str, dict[str, Any]] = {
    "unet2d": {"method": "unet2d"},
    "sam4em-scratch": {"method": "sam4em"},
    "sam4em-em": {"method": "sam4em", "encoder": "em-mim", "finetune": "lora"},
    "sam4em-em-full": {"method": "sam4em", "encoder": "em-mim", "finetune": "full"},
    "sam4em-em-llrd": {"method": "sam4em", "encoder": "em-mim", "finetune": "full", "layer_decay": 0.75},
    "sam4em-gen": {"method": "sam4em", "encoder": "generalist", "finetune": "lora"},
    "sam4em-gen-full": {"method": "sam4em", "encoder": "generalist", "finetune": "full"},
    "sam4em-gen-init": {"method": "sam4em", "encoder": "generalist", "finetune": "full", "init": True},
    "sam4em-scratch-shared": {"method": "sam4em", "shared": True},
    "sam4em-gen-init-shared": {"method": "sam4em", "encoder": "generalist", "finetune": "full", "init": True, "shared": True},
    "sam4em-scratch-joint": {"method": "sam4em", "shared": True, "joint_decoder": True},
    "sam4em-gen-init-joint": {"method": "sam4em", "encoder": "generalist", "finetune": "full", "init": True, "shared": True,
                              "joint_decoder": True},
}
# The generalist encoder of a target dataset: SAM4EM trained on these datasets' annotated training parts
# (all labels, 2D stage), one after another, each continuing from the encoder the one before left;
# never the target itself. The part that shares a class with the target (mito) comes last: starting from
# the whole generalist (`sam4em-gen-init`) then keeps that class's prompts, and measured far better on
# Lucchi++ than ending on ISBI membranes (docs/benchmarks.md, fifth round). ISBI 2012 is ssTEM of the
# same tissue as the VNC stacks (Drosophila larval VNC).
GENERALIST_SOURCES = {"lucchi_pp": ("isbi2012", "vnc"), "vnc": ("isbi2012", "lucchi_pp"), "isbi2012": ("lucchi_pp", "vnc")}
# Validation: one block at the end of the training volume; on VNC two slices (5-6), as stage-2 clips span 2.
_VAL_FRACTION = {"lucchi_pp": 0.15, "vnc": 0.3, "isbi2012": 0.2}
# Test crops (never seen in training), sized so that scoring costs well under the fine-tuning time:
# Lucchi++ 12 test slices of 384 px (the quick benchmark's crop), VNC its 3 test slices at 768 px.
_TEST_CROP = {
    "lucchi_pp": ((80, 92), (192, 576), (320, 704)),
    "vnc": ((7, 10), (128, 896), (128, 896)),
    "isbi2012": ((24, 30), (0, 512), (0, 512)),
}


@dataclass(frozen=True)
class CurveProfile:
    name: str
    datasets: tuple[str, ...]
    label_counts: tuple[int, ...]  # 0 stands for "all"
    methods: tuple[str, ...]
    finetune_seconds: float  # per run, both stages together
    memory_share: float  # of that, what SAM4EM spends in the 3D stage
    pretrain_seconds: float
    pretrain_batch: int
    generalist_seconds: float  # per target dataset, all its sources together
    batch_size: int
    threads: int
    note: str


CURVE_PROFILES = {
    "learning-curve": CurveProfile(
        name="learning-curve", datasets=("lucchi_pp", "vnc"), label_counts=(1, 2, 5, 0),
        methods=("unet2d", "sam4em-scratch", "sam4em-em", "sam4em-gen-init"), finetune_seconds=120.0, memory_share=0.25,
        pretrain_seconds=1500.0, pretrain_batch=8, generalist_seconds=1500.0, batch_size=4, threads=1,
        note="about 2.5 hours on 2 CPU cores: cpu-small, 25 min of EM pretraining and 25 min per generalist encoder "
             "once, 120 s of fine-tuning per run",
    ),
    "learning-curve-quick": CurveProfile(
        name="learning-curve-quick", datasets=("lucchi_pp",), label_counts=(1,),
        methods=("unet2d", "sam4em-scratch", "sam4em-em", "sam4em-gen-init"), finetune_seconds=20.0, memory_share=0.25,
        pretrain_seconds=60.0, pretrain_batch=4, generalist_seconds=40.0, batch_size=2, threads=1,
        note="a few minutes, for checks: 1 min of pretraining, 40 s per generalist, 20 s of fine-tuning per run; "
             "the numbers mean nothing",
    ),
}


def pretraining_volumes(data_dir: Path) -> list[str]:
    """The unlabelled material: training images only, never a test volume or test slice."""
    return [
        str(data_dir / "lucchi_pp" / "train_image.tif"),
        str(data_dir / "isbi2012" / "train" / "image"),
        str(data_dir / "isbi2012" / "test" / "image"),
        f"{data_dir / 'vnc' / 'stack1_z00-09.h5'}:raw@0-7",
        f"{data_dir / 'vnc' / 'stack2_raw_unlabelled.h5'}:raw",
    ]


def annotated_slices(plan: DatasetPlan, count: int) -> tuple[list[int], int] | None:
    """(annotated slices, how many of them are training slices) for `count` training slices (0: all),
    or None when the dataset has fewer.

    Training and validation parts are split as `sam4em train` splits them for SAM4EM (a gap of one
    clip), so the same slices lie in every method's training part.
    """
    from sam4em.data.samples import resolve_labelled_slices
    from sam4em.data.splits import split_z

    start, stop = plan.train_z or (0, _slice_count(plan))
    train_z, val_z = split_z(stop - start, _VAL_FRACTION[plan.name], "end", gap=plan.clip_length)
    train_range, val_range = (start + train_z[0], start + train_z[1]), (start + val_z[0], start + val_z[1])
    if count == 0:
        return [*range(*train_range), *range(*val_range)], train_range[1] - train_range[0]
    if count > train_range[1] - train_range[0]:
        return None
    picked = resolve_labelled_slices(count, train_range, (start, stop)) or ()
    return [*picked, (val_range[0] + val_range[1]) // 2], count


def _slice_count(plan: DatasetPlan) -> int:
    from sam4em.io import open_volume, parse_path_key

    path, key = parse_path_key(plan.train_image)
    with open_volume(path, key=key) as volume:
        return int(volume.shape[0])


def finetune_config(
    plan: DatasetPlan, method: str, slices: list[int], profile: CurveProfile, encoder: Path | None, seed: int = 0
) -> dict[str, Any]:
    """The `sam4em train` config of one run (equal wall time for every method); `encoder`: the folder a
    method with an encoder starts from (`encoder_folder`)."""
    spec = CURVE_METHODS[method]
    if spec.get("encoder") and encoder is None:
        raise ValueError(f"{method} starts from an encoder; pass its folder")
    memory = METHODS[spec["method"]].has_memory
    stage1_seconds = profile.finetune_seconds * ((1 - profile.memory_share) if memory else 1.0)
    volume = {**plan.training_volume(_VAL_FRACTION[plan.name]), "labelled_slices": slices}
    return {
        "method": spec["method"], "classes": plan.classes, "volumes": [volume],
        "model": {"base": str(encoder) if spec.get("encoder") else "cpu-small", "finetune": spec.get("finetune"),
                  "shared_memory": spec.get("shared", False), "joint_detail": spec.get("shared", False),
                  "joint_decoder": spec.get("joint_decoder", False)},
        "stage1": {"steps": 1_000_000, "batch_size": profile.batch_size, "lr": 1e-3, "warmup_steps": 20,
                   "max_seconds": stage1_seconds, "layer_decay": spec.get("layer_decay", 1.0)},
        "stage2": {"steps": 1_000_000, "batch_size": 1, "lr": 2e-4, "warmup_steps": 5, "clip_length": plan.clip_length,
                   "max_seconds": max(1.0, profile.finetune_seconds - stage1_seconds), "layer_decay": spec.get("layer_decay", 1.0)},
        "foreground_fraction": 0.6, "val_every": 25, "val_samples": 8, "checkpoint_every": 100, "tensorboard": False,
        "seed": seed, "init_from": str(encoder.parent / "run") if spec.get("init") and encoder is not None else None,
    }


def generalist_config(source: DatasetPlan, base: str, seconds: float, profile: CurveProfile) -> dict[str, Any]:
    """The `sam4em train` config of one part of a generalist encoder: `source`'s training part, all labels,
    every weight training (from scratch or from the encoder the previous part left), the 2D stage only."""
    return {
        "method": "sam4em", "classes": source.classes, "volumes": [source.training_volume(_VAL_FRACTION[source.name])], "stages": [1],
        # Per class, as in every recorded round: `sam4em-gen-init` then takes its detail fuse as trained.
        "model": {"base": base, "finetune": "full", "shared_memory": False, "joint_detail": False},
        "stage1": {"steps": 1_000_000, "batch_size": profile.batch_size, "lr": 1e-3, "warmup_steps": 20, "max_seconds": seconds},
        "foreground_fraction": 0.6, "val_every": 50, "val_samples": 8, "checkpoint_every": 100, "tensorboard": False,
    }


def encoder_folder(out: Path, method: str, dataset: str) -> Path | None:
    """Where the encoder a run of `method` on `dataset` starts from lies (None: a method without one).
    A generalist is the encoder its last part exported."""
    kind = CURVE_METHODS[method].get("encoder")
    if kind is None:
        return None
    if kind == "em-mim":
        return (out / "pretrain" / "em-mim").resolve()
    sources = GENERALIST_SOURCES[dataset]
    return (out / "pretrain" / f"generalist-{dataset}" / f"{len(sources) - 1}-{sources[-1]}" / "encoder").resolve()


def score_test_crop(plan: DatasetPlan, run_dir: Path, crop: tuple[tuple[int, int], ...]) -> tuple[dict[str, dict[str, float]], float]:
    """Segment the test crop with the model in `run_dir` and score it -> (per-class scores, seconds)."""
    from sam4em.data.class_mapping import ClassMapping
    from sam4em.evaluation.metrics import SemanticCounts

    probs, labels, seconds = segment_test_crop(plan, run_dir, crop)
    scores = {}
    for channel, (name, code) in enumerate(ClassMapping.parse(plan.classes).single_codes().items()):
        # Overlap scores only: the boundary and instance metrics of `sam4em evaluate` cost minutes here.
        pred, truth = probs[channel] > 0.5, labels == code
        counts = SemanticCounts(int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()), 0)
        scores[name] = {"dice": counts.dice, "iou": counts.iou, "precision": counts.precision, "recall": counts.recall}
    return scores, seconds


def _pretrain_worker(volumes: list[str], out: Path, profile: CurveProfile) -> None:
    import torch

    from sam4em.training.pretrain import PretrainSettings, pretrain

    torch.set_num_threads(profile.threads)
    settings = PretrainSettings(base="cpu-small", max_seconds=profile.pretrain_seconds, batch_size=profile.pretrain_batch,
                                lr=1.5e-3, tensorboard=True)
    pretrain(volumes, out, settings, resume=(out / "checkpoints").exists(), progress=False)


def _generalist_worker(sources: list[DatasetPlan], encoder: Path, profile: CurveProfile) -> None:
    """Train and export the parts of the generalist encoder ending in `encoder`, skipping finished ones."""
    import torch

    from sam4em.training.config import config_from_dict
    from sam4em.training.encoder_export import export_encoder
    from sam4em.training.trainer import train

    torch.set_num_threads(profile.threads)
    base = "cpu-small"
    for index, source in enumerate(sources):
        part = encoder.parent.parent / f"{index}-{source.name}"
        if not is_encoder_folder(part / "encoder"):
            config = config_from_dict(generalist_config(source, base, profile.generalist_seconds / len(sources), profile))
            result = train(config, part / "run", resume=(part / "run" / "checkpoints").exists(), progress=False)
            if result.interrupted:
                raise SystemExit(130)
            export_encoder(part / "run", part / "encoder")
        base = str(part / "encoder")


def _run_worker(plan: DatasetPlan, method: str, slices: list[int], train_count: int, profile: CurveProfile, encoder: Path | None,
                run_dir: Path, seed: int) -> None:
    import torch

    from sam4em.training.config import config_from_dict
    from sam4em.training.trainer import train

    torch.set_num_threads(profile.threads)
    config = config_from_dict(finetune_config(plan, method, slices, profile, encoder, seed))
    started = time.time()
    result = train(config, run_dir, resume=(run_dir / "checkpoints").exists(), progress=False)
    if result.interrupted:
        raise SystemExit(130)
    train_seconds = time.time() - started
    scores, infer_seconds = score_test_crop(plan, run_dir, _TEST_CROP[plan.name])
    record = {
        "dataset": plan.name, "method": method, "labelled": train_count, "annotated_slices": slices, "seed": seed,
        "train_seconds": round(train_seconds, 1), "steps": [result.steps.get(1, 0), result.steps.get(2, 0)],
        "val_dice": round(max(result.best_scores.values()), 4), "infer_seconds": round(infer_seconds, 1),
        "dice": float(np.mean([c["dice"] for c in scores.values()])), "classes": scores,
    }
    write_text_atomically(run_dir / "result.json", json.dumps(record, indent=2))


def run_learning_curve(
    *, profile: str, data_dir: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
    methods: list[str] | None = None, datasets: list[str] | None = None, seeds: list[int] | None = None,
    label_counts: list[int] | None = None,
) -> Path:
    """Pretrain once, then every (dataset, N, method, seed) run, skipping finished ones -> learning_curve.md.

    `seeds` (default [0]) repeat each run with other crops, augmentations and initialisations of the
    trained parts; `label_counts` (0: all) overrides the profile's.
    """
    from sam4em.workflows.demo import find_data_dir

    settings = CURVE_PROFILES[profile]
    data = find_data_dir(data_dir, datasets=("lucchi_pp", "isbi2012", "vnc"))
    out = Path(out_dir)
    plans = dataset_plans(data, full_test=False)
    chosen_methods = methods or list(settings.methods)
    unknown = set(chosen_methods) - set(CURVE_METHODS) | set(datasets or []) - set(plans)
    if unknown:
        raise ValueError(f"unknown method or dataset {sorted(unknown)}; methods: {', '.join(CURVE_METHODS)}; datasets: {', '.join(plans)}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"sam4em benchmark, profile {profile}: {settings.note}", flush=True)
    context = multiprocessing.get_context("spawn")
    encoder = (out / "pretrain" / "em-mim").resolve()
    if any(CURVE_METHODS[m].get("encoder") == "em-mim" for m in chosen_methods) and not is_encoder_folder(encoder):
        print(f"  pretraining the encoder ({settings.pretrain_seconds:.0f} s) on {len(pretraining_volumes(data))} volumes", flush=True)
        run_in_process(context, _pretrain_worker, (pretraining_volumes(data), encoder, settings), "pretrain")
    if any(CURVE_METHODS[m].get("encoder") == "generalist" for m in chosen_methods):
        for name in datasets or list(settings.datasets):
            generalist = encoder_folder(out, "sam4em-gen", name)
            if generalist is not None and not is_encoder_folder(generalist):
                print(f"  training the generalist encoder for {name} ({settings.generalist_seconds:.0f} s) on "
                      f"{', then '.join(GENERALIST_SOURCES[name])}", flush=True)
                sources = [plans[source] for source in GENERALIST_SOURCES[name]]
                run_in_process(context, _generalist_worker, (sources, generalist, settings), f"generalist for {name}")
    started = time.time()
    for count in label_counts or settings.label_counts:  # the fewest labels first: the cells that matter most finish first
        for name in datasets or list(settings.datasets):
            annotation = annotated_slices(plans[name], count)
            if annotation is None:
                continue  # fewer training slices than `count`
            slices, train_count = annotation
            for seed in seeds or [0]:
                for method in chosen_methods:  # interleaved within the cell: similar machine load
                    run_dir = out / "runs" / name / f"n{count or 'all'}" / (method + (f"-seed{seed}" if seed else ""))
                    if not (run_dir / "result.json").exists():
                        run_dir.mkdir(parents=True, exist_ok=True)
                        arguments = (plans[name], method, slices, train_count, settings, encoder_folder(out, method, name), run_dir, seed)
                        run_in_process(context, _run_worker, arguments, str(run_dir))
                    record = json.loads((run_dir / "result.json").read_text())
                    print(f"  {name:10s} n={count or 'all':<4} {method:22s} seed {seed} Dice {record['dice']:.3f}  "
                          f"({time.time() - started:.0f} s)", flush=True)
                    write_curve(out, settings, data)
    return write_curve(out, settings, data)


def write_curve(out: Path, profile: CurveProfile, data_dir: Path) -> Path:
    """learning_curve.csv/.md/.png from every finished run under `out`."""
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/*/result.json"))]
    pretrain_record = _pretrain_outcome(out / "pretrain" / "em-mim")
    lines = [
        f"# sam4em learning curve ({profile.name} profile)", "",
        f"- {profile.note}; torch threads per run: {profile.threads}.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; data: {data_dir}.",
        f"- EM pretraining: {pretrain_record}.",
        *[f"- Generalist encoder for {folder.name.removeprefix('generalist-')}: {_generalist_outcome(folder)}."
          for folder in sorted((out / "pretrain").glob("generalist-*"))],
        f"- Profile: {json.dumps(asdict(profile))}.", "",
        "| dataset | annotated training slices | method | seed | test Dice (mean over classes) | per class | val Dice | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["dataset"], r["labelled"], list(CURVE_METHODS).index(r["method"]), r.get("seed", 0))):
        per_class = ", ".join(f"{k} {v['dice']:.3f}" for k, v in r["classes"].items())
        lines.append(f"| {r['dataset']} | {r['labelled']} | {r['method']} | {r.get('seed', 0)} | {r['dice']:.3f} | {per_class} | "
                     f"{r['val_dice']:.3f} | {r['steps'][0]}+{r['steps'][1]} | {r['train_seconds']:.0f} |")
    (out / "learning_curve.md").write_text("\n".join(lines) + "\n")
    with (out / "learning_curve.csv").open("w") as f:
        f.write("dataset,labelled,method,seed,dice,val_dice,steps_stage1,steps_stage2,train_seconds\n")
        for r in records:
            f.write(f"{r['dataset']},{r['labelled']},{r['method']},{r.get('seed', 0)},{r['dice']:.4f},{r['val_dice']:.4f},"
                    f"{r['steps'][0]},{r['steps'][1]},{r['train_seconds']}\n")
    if records:
        plot_curve(records, out / "learning_curve.png")
    return out / "learning_curve.md"


def _pretrain_outcome(folder: Path) -> str:
    config = folder / "config.yaml"
    if not is_encoder_folder(folder) or not config.exists():
        return "not run"
    import yaml

    outcome = (yaml.safe_load(config.read_text()) or {}).get("outcome", {})
    return (f"{outcome.get('steps')} steps in {outcome.get('seconds')} s, final masked-patch loss "
            f"{outcome.get('final_loss')} (mean predictor 1.0)")


def _generalist_outcome(folder: Path) -> str:
    """Each part of a generalist encoder: its dataset, steps, seconds and best validation Dice."""
    import yaml

    parts = []
    for part in sorted(p for p in folder.iterdir() if (p / "run" / "metrics.csv").exists()):
        with (part / "run" / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue  # interrupted before its first step
        config = part / "run" / "config.yaml"
        selection = (yaml.safe_load(config.read_text()) or {}).get("selection", {}) if config.exists() else {}
        parts.append(f"{part.name.split('-', 1)[1]} ({rows[-1]['step']} steps in {float(rows[-1]['seconds']):.0f} s, "
                     f"val Dice {selection.get('val_dice_mean', 'n/a')})")
    return ", then ".join(parts) or "not run"


def plot_curve(records: list[dict[str, Any]], path: Path) -> None:
    """Test Dice (mean over seeds) against annotated slices, one panel per dataset, one line per method."""
    from matplotlib.figure import Figure

    names = sorted({r["dataset"] for r in records})
    figure = Figure(figsize=(5 * len(names), 4))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for method in CURVE_METHODS:
            runs = [r for r in records if r["dataset"] == name and r["method"] == method]
            counts = sorted({r["labelled"] for r in runs})
            points = [(n, float(np.mean([r["dice"] for r in runs if r["labelled"] == n]))) for n in counts]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set(xscale="log", xlabel="annotated training slices (+1 for validation)", ylabel="test Dice", title=name, ylim=(0, 1))
        ticks = sorted({r["labelled"] for r in records if r["dataset"] == name})
        ax.set_xticks(ticks, [str(n) for n in ticks], minor=False)  # the counts run, not powers of ten
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
