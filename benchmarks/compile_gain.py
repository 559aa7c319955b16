"""What `sam4em segment --compile` buys per window: model-only ms per window of a random-weight SAM4EM
(3 classes, full memory bank), eager and then compiled part by part (`sam4em.models.compiled`), in one
process, with the compilation's own time.

Usage::

    python benchmarks/compile_gain.py [--model sam2.1-hiera-tiny] [--device cuda] [--window 512] [--batch 16]

Prints one JSON line. On CUDA the calls run under bf16 autocast, as `segment` runs there.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sam4em.models import build_model
from sam4em.models.compiled import compile_parts
from sam4em.workflows.speed_benchmark import model_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, 3, pretrained=False, image_size=args.window).eval().to(device)
    images = torch.rand(args.batch, 1, args.window, args.window, device=device)
    eager = model_rates(model, images, args.repeats)
    started = time.perf_counter()
    compile_parts(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        bank = model.new_memory_bank()
        for _ in range(model.memory_capacity + 3):  # every bank length, then the full bank again
            model(images, bank)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_seconds = time.perf_counter() - started
    compiled = model_rates(model, images, args.repeats)
    print(json.dumps({"model": args.model, "device": str(device), "window": args.window, "batch": args.batch,
                      "eager_ms": eager["full_ms"], "compiled_ms": compiled["full_ms"],
                      "gain": eager["full_ms"] / compiled["full_ms"], "compile_seconds": compile_seconds,
                      "eager_encoder_ms": eager["encoder_ms"], "compiled_encoder_ms": compiled["encoder_ms"]}))


if __name__ == "__main__":
    main()
