"""`sam4em benchmark --profile speed`: how fast SAM4EM runs where users run it (issue 14).

Per model (``cpu-small`` on a CPU; ``sam2.1-hiera-tiny`` and ``sam2.1-hiera-base-plus`` on CUDA; the
first of them in each class layout (`LAYOUTS`): per class, as SAM2 runs objects and as Meta's weights
default to; with the memory and the detail head shared by the classes, `BuildOptions.shared_memory`
and ``joint_detail``, as a base trained from scratch defaults to; and with the decoders joint too,
``joint_decoder``), each in a fresh process so that its peak
memory is its own, with random weights (speed does not depend on them) and 3 classes:

- **end to end**: slices/s of :func:`sam4em.inference.streaming.segment_to_file` on a random uint8
  Zarr volume, both z-directions, float16 probabilities, default tiling (halo 1/8 of the window);
- **model only**: windows/s of ``model(images, bank)`` on batches of as many windows as a slice has
  tiles, with a full memory bank (the steady state of all but a volume's first slices), and the
  same for the bare image encoder: their ratio is what SAM4EM costs over its encoder per window;
  **efficiency** is the share of the end-to-end wall time spent inside the model's forward calls
  (timed by a hook on the whole model during ``segment_to_file``): what reading, normalising, tiling,
  blending, spilling and writing leave to the model. (Dividing the end-to-end window rate by the
  model-only one would compare a run whose first slices have short memory banks with full-bank
  calls, and read above 100%.)
- **where the time goes**: milliseconds per window in the encoder, enhancer, memory attention, memory
  encoder, prompt generator, mask decoders and detail head (timed by forward hooks; on CUDA each
  part is synchronised, so the parts add up to more than an unhooked pass);
- **training**: steps/s and the share of step time spent waiting for data (the trainer's own
  ``steps_per_s`` and ``data_wait`` metrics, median over a short time-budgeted stage 1 on synthetic
  blobs, batch and crop from the device's preset, ``num_workers`` by the device) and, on CUDA, how
  busy the GPU was (NVML's utilisation, sampled every 0.5 s over the whole run: `gpu_busy`);
- **peak memory**: resident memory (CPU, the process's maximum) or allocated GPU memory.

Encoder and full-model timings are interleaved (encoder, model, encoder, ...) and their medians
compared, so load from other processes affects both alike; absolute rates on a shared machine are not.
The whole profile takes about 2 minutes on a 2-core CPU and under 5 on one GPU.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sam4em.evaluation.results_file import write_json
from sam4em.workflows.benchmark import run_in_process

__all__ = ["SpeedCase", "gpu_busy", "measure_case", "run_speed_benchmark", "speed_cases"]

CLASSES = 3
#: SAM4EM's parts as timed by `part_times`: label -> module paths (a part nested in another counts once, as the outer).
PARTS = {
    "image encoder": ("image_encoder",),
    "enhancer": ("enhancer",),
    "memory attention": ("memory.memory_attention",),
    # A shared memory calls the memory encoder's parts itself (`SliceMemory`), not its forward.
    "memory encoder": ("memory.memory_encoder", "memory.memory_encoder.mask_downsampler",
                       "memory.memory_encoder.feature_projection", "memory.memory_encoder.memory_fuser",
                       "memory.memory_encoder.projection"),
    "prompt generator": ("prompt_generator", "prompt_encoder.mask_embed"),
    # The decoders' high-resolution convolutions run outside their forward, once per slice batch.
    # Joint decoding runs the decoders' parts itself, not their forward.
    "mask decoders": ("stage1_decoder", "stage2_decoder", "stage1_decoder.conv_s0", "stage1_decoder.conv_s1",
                      "stage2_decoder.conv_s0", "stage2_decoder.conv_s1", "joint_decoding"),
    "detail head": ("detail_head", "detail_head.stem"),
}


@dataclass(frozen=True)
class SpeedCase:
    """One model's measurements: window (model input) and slice edge, slices of the test volume and
    how `segment_to_file` cuts it (z-block size, windows per tile batch; streams are automatic),
    seconds of training; `device` as torch names it."""

    model: str
    device: str
    window: int
    slice_size: int
    slices: int
    block_size: int
    batch_size: int
    train_seconds: float
    repeats: int
    # A key of `LAYOUTS`: which parts run once per window rather than once per class
    layout: str = "per-class"

    @property
    def label(self) -> str:
        # Always named: the memory's default layout differs by weights (shared from scratch, per class on Meta's).
        return f"{self.model} ({LAYOUTS[self.layout][1]})"


#: The class layouts measured: key -> (build options, label).
LAYOUTS: dict[str, tuple[dict[str, Any], str]] = {
    "per-class": ({"shared_memory": False, "joint_detail": False, "joint_decoder": False}, "per class"),
    "shared": ({"shared_memory": True, "joint_detail": True, "joint_decoder": False}, "shared memory, joint detail"),
    "joint": ({"shared_memory": True, "joint_detail": True, "joint_decoder": True}, "shared memory, joint detail and decoders"),
}


def speed_cases(device: str) -> list[SpeedCase]:
    """The models measured on `device` ("cpu" or "cuda"): each base as SAM2 runs objects (memory and detail
    head per class), and the first also in the other `LAYOUTS`."""
    if device.startswith("cuda"):
        # 6 blocks of 16: automatic streams put 6 x 9 windows through each call.
        gpu = partial(SpeedCase, device=device, window=512, slice_size=1024, slices=96, block_size=16, batch_size=16,
                      train_seconds=40.0, repeats=10)
        return [gpu("sam2.1-hiera-tiny", layout=layout) for layout in LAYOUTS] + [gpu("sam2.1-hiera-base-plus")]
    cpu = partial(SpeedCase, "cpu-small", device, window=256, slice_size=512, slices=8, block_size=8, batch_size=8,
                  train_seconds=25.0, repeats=3)
    return [cpu(layout=layout) for layout in LAYOUTS]


# -- measurements (run inside the case's own process) ------------------------------------------------
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: Any) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, else this process's maximum resident memory."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _autocast(device: Any) -> Any:
    """bf16 autocast on CUDA, as the slice predictor runs there; nothing elsewhere."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _full_bank(model: Any, images: Any) -> Any:
    """A memory bank filled to capacity (copies of one entry cost memory attention what distinct ones do)."""
    bank = model.new_memory_bank()
    model(images, bank)
    while bank is not None and len(bank) < bank.capacity:
        bank.push(bank.entries[-1])
    return bank


def model_rates(model: Any, images: Any, repeats: int) -> dict[str, float]:
    """ms per window of the bare image encoder and of the full model (full bank), interleaved; their ratio."""
    import torch

    device = images.device
    pixels = (images.expand(-1, 3, -1, -1) - model.pixel_mean) / model.pixel_std
    encoder: list[float] = []
    full: list[float] = []
    with torch.inference_mode(), _autocast(device):
        bank = _full_bank(model, images)
        model.image_encoder(pixels)  # warm-up (first calls allocate and pick kernels)
        for _ in range(repeats):
            for times, run in ((encoder, lambda: model.image_encoder(pixels)), (full, lambda: model(images, bank))):
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                times.append((time.perf_counter() - start) / images.shape[0])  # the bank stays full: push drops the oldest
    encoder_ms, full_ms = 1e3 * statistics.median(encoder), 1e3 * statistics.median(full)
    return {"encoder_ms": encoder_ms, "full_ms": full_ms, "ratio": full_ms / encoder_ms, "windows_per_s": 1e3 / full_ms}


@contextmanager
def _hooked(
    model: Any, totals: dict[str, float], device: Any, parts: dict[str, tuple[str, ...]] = PARTS
) -> Iterator[None]:
    """Forward hooks adding each part's seconds to `totals`; a part running inside another counts for the outer."""
    active: list[tuple[str, float]] = []
    handles = []

    def before(label: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            _sync(device)
            active.append((label, time.perf_counter()))

        return hook

    def after(module: Any, args: Any, output: Any) -> None:
        _sync(device)
        label, start = active.pop()
        if not active:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    for label, paths in parts.items():
        for path in paths:
            module = model.get_submodule(path) if _has(model, path) else None
            if module is not None:
                handles += [module.register_forward_pre_hook(before(label)), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _has(model: Any, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def part_times(model: Any, images: Any, repeats: int) -> dict[str, float]:
    """ms per window of each of `PARTS` and of the rest ("other": tensor reshaping, interpolation, glue)."""
    import torch

    device = images.device
    totals: dict[str, float] = {}
    with torch.inference_mode(), _autocast(device):
        bank = _full_bank(model, images)
        _sync(device)
        start = time.perf_counter()
        with _hooked(model, totals, device):
            for _ in range(repeats):
                model(images, bank)
        _sync(device)
        whole = time.perf_counter() - start
    scale = 1e3 / repeats / images.shape[0]
    parts = {label: totals.get(label, 0.0) * scale for label in PARTS}
    parts["other"] = whole * scale - sum(parts.values())  # >= 0: nested parts are counted once
    return parts


def stream_rate(model: Any, case: SpeedCase, workdir: Path) -> dict[str, float]:
    """slices/s of `segment_to_file` end to end (both directions, float16 probabilities) and tiles per slice."""
    from sam4em.inference.options import SegmentOptions
    from sam4em.inference.predictor import plan_tiling
    from sam4em.inference.run import prepare_run
    from sam4em.inference.streaming import segment_to_file
    from sam4em.io import create_volume

    source = workdir / "raw.zarr"
    rng = np.random.default_rng(0)
    shape = (case.slices, case.slice_size, case.slice_size)
    with create_volume(source, shape, np.uint8, voxel_size=(40.0, 8.0, 8.0)) as out:
        out[:] = rng.integers(0, 256, out.shape, dtype=np.uint8)
    # Streams chosen by the run segment_to_file prepares, then passed explicitly: the report names what ran.
    plan = plan_tiling((case.slice_size, case.slice_size), model.image_size, None, None)
    options = SegmentOptions(direction="both", device=case.device, overwrite=True, block_size=case.block_size,
                             batch_size=case.batch_size)
    with prepare_run(source, workdir / "streams-probe.zarr", model, options) as (run, _):
        streams = run.options.streams
    assert streams is not None, "prepare_run resolves the streams"
    in_model: dict[str, float] = {}
    _sync(model.pixel_mean.device)
    start = time.perf_counter()
    with _hooked(model, in_model, model.pixel_mean.device, {"model": ("",)}):
        segment_to_file(source, workdir / "probs.zarr", model, options.replace(streams=streams))
    seconds = time.perf_counter() - start
    return {"slices_per_s": case.slices / seconds, "tiles_per_slice": len(plan.tiles), "seconds": seconds,
            "efficiency": in_model["model"] / seconds, "streams": streams}


def training_rate(case: SpeedCase, workdir: Path) -> dict[str, float | None]:
    """Median steps/s and data-wait share of a short time-budgeted stage 1 (the trainer's own metrics)."""
    import csv

    import tifffile

    from sam4em.training.config import config_from_dict
    from sam4em.training.presets import fill_unset
    from sam4em.training.trainer import train

    size = max(case.window + case.window // 4, 320)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((16, size, size), np.uint8)
    for cy, cx in rng.uniform(20, size - 20, (12, 2)):
        labels[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 255
    image = np.clip(150 + rng.normal(0, 12, labels.shape) - 0.35 * labels, 0, 255).astype(np.uint8)
    tifffile.imwrite(workdir / "image.tif", image)
    tifffile.imwrite(workdir / "labels.tif", labels)
    data = fill_unset({
        "classes": "mito=255",
        "volumes": [{"image": str(workdir / "image.tif"), "labels": str(workdir / "labels.tif"), "val_fraction": 0.25}],
        "model": {"base": case.model, "image_size": case.window},
        "stages": [1],
        "stage1": {"steps": 1_000_000, "max_seconds": case.train_seconds, "warmup_steps": 5},
        "val_every": 1_000_000, "val_samples": 1, "checkpoint_every": 1_000_000, "tensorboard": False,
        "device": case.device,
    }, "auto")
    config = config_from_dict(data)
    busy: list[float] = []
    with gpu_busy(case.device, busy):
        train(config, workdir / "run", progress=False)
    with (workdir / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steady = rows[3:] or rows  # the first steps start the loader's workers and pick kernels
    return {
        "train_steps_per_s": statistics.median(float(r["steps_per_s"]) for r in steady),
        "train_data_wait": statistics.median(float(r["data_wait"]) for r in steady),
        "train_batch": config.stage1.batch_size,
        "train_steps": len(rows),
        # The whole run, its start and end included (a conservative figure for the GPU goal of issue 14),
        # and the median sample, nearer the steady state when the start takes under half the run.
        "train_gpu_busy": statistics.mean(busy) / 100 if busy else None,
        "train_gpu_busy_median": statistics.median(busy) / 100 if busy else None,
    }


@contextmanager
def gpu_busy(device: str, samples: list[float], every: float = 0.5) -> Iterator[None]:
    """While the body runs, append to `samples` the GPU's utilisation every `every` s (the percentage of
    time a kernel ran, nvidia-smi's figure, through NVML); nothing on other devices, or without NVML."""
    import threading

    import torch

    if not device.startswith("cuda"):
        yield
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            try:
                samples.append(float(torch.cuda.utilization(device)))
            except Exception:  # NVML absent or refusing (no binding, no driver): the report shows no figure
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def measure_case(case: SpeedCase, workdir: Path) -> dict[str, Any]:
    """Every measurement of `case` (in this process, which should be fresh for the memory peaks)."""
    import torch

    from sam4em.models import build_model

    device = torch.device(case.device)
    torch.manual_seed(0)
    model = build_model(case.model, CLASSES, pretrained=False, image_size=case.window, **LAYOUTS[case.layout][0])
    model = model.eval().to(device)
    result: dict[str, Any] = {**asdict(case), "label": case.label, "classes": CLASSES}
    result.update(stream_rate(model, case, workdir))
    result["segment_peak_mib"] = _peak_mib(device)
    images = torch.rand(min(8, result["tiles_per_slice"]), 1, case.window, case.window, device=device)
    result.update(model_rates(model, images, case.repeats))
    result["parts_ms"] = part_times(model, images, max(1, case.repeats // 2))
    result["model_batch"] = images.shape[0]
    del model
    if case.layout != "per-class":
        return result  # training is measured on one class (`training_rate`), where sharing changes nothing
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result.update(training_rate(case, workdir))
    result["train_peak_mib"] = _peak_mib(device)
    return result


def _case_worker(case: SpeedCase, result_file: Path) -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="sam4em-speed-") as tmp:
        write_json(result_file, measure_case(case, Path(tmp)), overwrite=True)


# -- the report ------------------------------------------------------------------------------------
def _machine(device: str) -> str:
    import torch

    from sam4em.devices import describe_device

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {describe_device(device)}, "
            f"torch {torch.__version__}, Python {platform.python_version()}; load average at the end {load}")


def speed_table(results: list[dict[str, Any]], machine: str) -> str:
    """The markdown report of `run_speed_benchmark`."""
    lines = [
        f"Machine: {machine}. Random weights, {CLASSES} classes.", "",
        "| model | device | window | slice | tiles/slice | z-streams | segment_to_file slices/s (both directions) "
        "| model-only windows/s | efficiency (time in the model) | encoder ms/window | SAM4EM ms/window | SAM4EM / encoder | peak MiB (segment) "
        "| train steps/s (batch) | data wait | GPU busy (train: mean, median) | peak MiB (train) |",
        "|" + "---|" * 17,
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['device']} | {r['window']} | {r['slice_size']}² | {r['tiles_per_slice']} | {r['streams']} "
            f"| {r['slices_per_s']:.2f} | {r['windows_per_s']:.2f} | {100 * r['efficiency']:.0f}% "
            f"| {r['encoder_ms']:.1f} | {r['full_ms']:.1f} | {r['ratio']:.2f}x | {r['segment_peak_mib']:.0f} | "
            + (f"{r['train_steps_per_s']:.2f} ({r['train_batch']}) | {100 * r['train_data_wait']:.0f}% "
               f"| {_busy(r.get('train_gpu_busy'), r.get('train_gpu_busy_median'))} | {r['train_peak_mib']:.0f} |"
               if "train_steps_per_s" in r else "- | - | - | - |")
        )
    lines += ["", "Where SAM4EM's time per window goes (ms per window, full memory bank, forward hooks):", ""]
    labels = [*PARTS, "other"]
    lines += ["| model | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for r in results:
        total = sum(r["parts_ms"].values())
        lines.append(f"| {r['label']} | " + " | ".join(
            f"{r['parts_ms'][k]:.1f} ({100 * r['parts_ms'][k] / total:.0f}%)" for k in labels) + " |")
    return "\n".join(lines)


def _busy(mean: float | None, median: float | None) -> str:
    return "-" if mean is None or median is None else f"{100 * mean:.0f}%, {100 * median:.0f}%"


def run_speed_benchmark(*, out_dir: str | os.PathLike[str], device: str | None = None) -> Path:
    """Measure every model of `speed_cases` (each in a fresh process); write speed.json and speed.md.

    `device`: "cpu", "cuda", ...; None: `sam4em.devices.default_device`. Returns the path of speed.md.
    """
    from sam4em.devices import default_device, resolve_device

    chosen = str(resolve_device(device) or default_device())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    results = []
    for case in speed_cases(chosen):
        print(f"sam4em benchmark --profile speed: {case.label} on {chosen}", flush=True)
        result_file = out / f"speed_{case.model}{'' if case.layout == 'per-class' else '_' + case.layout}.json"
        run_in_process(context, _case_worker, (case, result_file), case.label)
        results.append(json.loads(result_file.read_text()))
    write_json(out / "speed.json", results, overwrite=True)
    report = out / "speed.md"
    report.write_text(f"# sam4em speed benchmark\n\n{speed_table(results, _machine(chosen))}\n")
    return report
