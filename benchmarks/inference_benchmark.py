"""Inference benchmark: slices per second and peak memory of streaming segmentation (file to file),
and what SAM4EM costs over its bare image encoder.

Usage::

    python benchmarks/inference_benchmark.py [--quick] [--out results.json] [--threads N]

Every measurement runs in a fresh subprocess, so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees torch's allocations; tracemalloc does not)
belongs to that configuration alone. Models have random weights (``pretrained=False``): speed and
memory do not depend on the weights. Inputs are random uint8 Zarr volumes, outputs float16 Zarr
probabilities written by :func:`sam4em.inference.streaming.segment_to_file` with default tiling
(halo 1/8 of the window per side). Three tables go to stdout as markdown:

1. throughput: slices/s (forward pass, one z-block) per model, window and slice size;
2. memory scaling: peak memory of a 256-slice volume against a 32-slice one of the same slice size,
   both directions, blocks of 32 (streaming keeps it flat: the ratio should stay under 1.5);
3. SAM4EM over the bare image encoder: time per window of ``model.image_encoder`` alone against the
   full ``model(images, bank)`` (enhancer, memory attention with a full bank, prompt generator, both
   decoders and memory encoding) on the same batch.

The default run takes about 10 minutes on a 2-core CPU; ``--quick`` (cpu-small only) about 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Windows per timed batch in the encoder comparison.
ENCODER_BATCH = 2


@dataclass(frozen=True)
class Config:
    """One measurement: ``kind`` is "stream" (segment_to_file) or "encoder" (encoder vs full model)."""

    kind: str
    model: str
    window: int
    size: int = 0
    slices: int = 0
    direction: str = "forward"
    block_size: int = 32
    #: In-plane tile edge; 0 for the default tiling.
    tile: int = 0


def configurations(quick: bool) -> list[Config]:
    # One 256-pixel window per 256² slice (tile 256, no halo) makes the 256-slice run affordable.
    scaling = [Config("stream", "cpu-small", 256, 256, n, "both", tile=256) for n in (32, 256)]
    if quick:
        return [
            Config("stream", "cpu-small", 256, 256, 4),
            Config("stream", "cpu-small", 256, 256, 8, "both", tile=256),
            Config("stream", "cpu-small", 256, 256, 32, "both", tile=256),
            Config("encoder", "cpu-small", 256),
        ]
    # Slice counts keep each throughput run to a few seconds of compute; slices/s hardly depends on them.
    return [
        Config("stream", "cpu-small", 256, 256, 8),
        Config("stream", "cpu-small", 256, 512, 4),
        Config("stream", "cpu-small", 256, 1024, 2),
        Config("stream", "cpu-small", 512, 512, 2),
        Config("stream", "cpu-small", 512, 1024, 1),
        Config("stream", "sam2.1-hiera-tiny", 256, 256, 2),
        Config("stream", "sam2.1-hiera-tiny", 256, 512, 1),
        Config("stream", "sam2.1-hiera-tiny", 512, 512, 1),
        *scaling,
        Config("encoder", "cpu-small", 256),
        Config("encoder", "cpu-small", 512),
        Config("encoder", "sam2.1-hiera-tiny", 256),
        Config("encoder", "sam2.1-hiera-tiny", 512),
    ]


def peak_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def input_volume(workdir: Path, size: int, slices: int) -> Path:
    """A random uint8 (slices, size, size) Zarr volume, written 32 slices at a time."""
    from sam4em.io import create_volume

    path = workdir / f"raw_{size}_{slices}.zarr"
    if not path.exists():
        rng = np.random.default_rng(0)
        with create_volume(path, (slices, size, size), np.uint8, voxel_size=(40.0, 8.0, 8.0)) as out:
            for start in range(0, slices, 32):
                stop = min(start + 32, slices)
                out[start:stop] = rng.integers(0, 256, (stop - start, size, size), dtype=np.uint8)
    return path


def measure_stream(config: Config, workdir: Path) -> dict[str, Any]:
    from sam4em.inference.predictor import plan_tiling
    from sam4em.inference.streaming import SegmentOptions, segment_to_file
    from sam4em.models import build_model

    model = build_model(config.model, 1, pretrained=False, image_size=config.window).eval()
    source = workdir / f"raw_{config.size}_{config.slices}.zarr"
    output = workdir / f"out_{os.getpid()}.zarr"
    start = time.perf_counter()
    tile = (config.tile, config.tile) if config.tile else None
    halo = (0, 0) if config.tile else None
    options = SegmentOptions(
        direction=config.direction, block_size=config.block_size, tile_shape=tile, halo=halo, overwrite=True
    )
    segment_to_file(source, output, model, options)
    seconds = time.perf_counter() - start
    tiles = len(plan_tiling((config.size, config.size), model.image_size, tile, halo).tiles)
    return {"seconds": seconds, "slices_per_s": config.slices / seconds, "tiles_per_slice": tiles}


def measure_encoder(config: Config) -> dict[str, Any]:
    import torch

    from sam4em.models import build_model
    from sam4em.workflows.speed_benchmark import model_rates

    model = build_model(config.model, 1, pretrained=False, image_size=config.window).eval()
    # Full memory bank, encoder and model timed in turns (medians): see `sam4em benchmark --profile speed`.
    rates = model_rates(model, torch.rand(ENCODER_BATCH, 1, config.window, config.window), repeats=2)
    return {"encoder_ms": rates["encoder_ms"], "full_ms": rates["full_ms"], "overhead": rates["ratio"] - 1.0}


def worker(config: Config, workdir: Path, threads: int) -> None:
    """Run one configuration in this (fresh) process and print its result as JSON."""
    import torch

    torch.set_num_threads(threads)
    result = measure_stream(config, workdir) if config.kind == "stream" else measure_encoder(config)
    result["peak_mib"] = peak_mib()
    print(json.dumps(result))


def run(config: Config, workdir: Path, threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps(asdict(config)),
        "--workdir",
        str(workdir),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config}: benchmark worker failed:\n{done.stderr[-2000:]}")
    return {**asdict(config), **json.loads(done.stdout.strip().splitlines()[-1])}


def tables(results: list[dict[str, Any]], threads: int) -> str:
    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} on CPU with {threads} threads, Python {platform.python_version()}; "
        f"load average at the end {load} (other processes slow every timing).",
        "",
        "| model | window | slice | tiles/slice | slices | slices/s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    streams = [r for r in results if r["kind"] == "stream"]
    for r in (r for r in streams if r["direction"] == "forward"):
        lines.append(
            f"| {r['model']} | {r['window']} | {r['size']}² | {r['tiles_per_slice']} | {r['slices']} "
            f"| {r['slices_per_s']:.2f} | {r['peak_mib']:.0f} |"
        )
    scaling = [r for r in streams if r["direction"] == "both"]
    if scaling:
        base = scaling[0]["peak_mib"]
        lines += [
            "",
            "| model | slice | tiles/slice | slices | direction | block | slices/s | peak MiB | × smallest |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scaling:
            lines.append(
                f"| {r['model']} | {r['size']}² | {r['tiles_per_slice']} | {r['slices']} | both | {r['block_size']} "
                f"| {r['slices_per_s']:.2f} | {r['peak_mib']:.0f} | {r['peak_mib'] / base:.2f} |"
            )
    encoders = [r for r in results if r["kind"] == "encoder"]
    if encoders:
        lines += [
            "",
            "| model | window | image encoder ms/window | SAM4EM ms/window | SAM4EM over encoder |",
            "|---|---|---|---|---|",
        ]
        for r in encoders:
            lines.append(
                f"| {r['model']} | {r['window']} | {r['encoder_ms']:.0f} | {r['full_ms']:.0f} "
                f"| +{100 * r['overhead']:.0f}% |"
            )
        lines.append(f"\n(batches of {ENCODER_BATCH} windows, memory bank full)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="cpu-small only, small volumes (about 2 minutes)"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Config(**json.loads(args.worker)), args.workdir, args.threads)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="sam4em-bench-") as tmp:
        workdir = Path(tmp)
        for config in configurations(args.quick):
            if config.kind == "stream":
                input_volume(workdir, config.size, config.slices)
            print(f"running {config}", file=sys.stderr, flush=True)
            results.append(run(config, workdir, args.threads))
    print(tables(results, args.threads))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
