"""What `sam4em segment --compile` buys per window: model-only ms per window of a random-weight SAM4EM
(3 classes, full memory bank, the memory per class as Meta's weights run it), eager and then compiled
part by part (`sam4em.models.compiled`), in one process; the compilation's own time; and how far the
compiled model's probabilities are from the eager model's.

Usage::

    python benchmarks/compile_gain.py [--model sam2.1-hiera-tiny] [--device cuda] [--window 512] [--batch 16]

Prints one JSON line for the eager model, then one with everything. On CUDA the calls run under bf16
autocast, as `segment` runs there.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from typing import Any

import torch
from model_options import model_parser  # beside this script

from sam4em.models import build_model
from sam4em.models.compiled import compile_parts
from sam4em.workflows.speed_benchmark import model_rates


def _probabilities(model: Any, images: torch.Tensor, slices: int) -> torch.Tensor:
    """Sigmoid outputs of `slices` consecutive calls from an empty bank (the bank fills as in a volume)."""
    bank = model.new_memory_bank()
    return torch.stack([torch.sigmoid(model(images, bank).logits.float()) for _ in range(slices)])


def main() -> None:
    parser = model_parser(__doc__, repeats=6)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, 3, pretrained=False, image_size=args.window, shared_memory=False).eval().to(device)
    eager_twin = copy.deepcopy(model)
    images = torch.rand(args.batch, 1, args.window, args.window, device=device)
    eager = model_rates(model, images, args.repeats)
    result: dict[str, Any] = {"model": args.model, "device": str(device), "window": args.window, "batch": args.batch,
                              "eager_ms": eager["full_ms"], "eager_encoder_ms": eager["encoder_ms"]}
    print(json.dumps(result), flush=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    started = time.perf_counter()
    compile_parts(model)
    with torch.inference_mode(), autocast:
        for batch in (args.batch, 1):  # `segment`'s last tile batch of a slice is often smaller: it compiles again
            _probabilities(model, images[:batch], model.memory_capacity + 3)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_seconds = time.perf_counter() - started
        slices = model.memory_capacity + 2
        difference = (_probabilities(model, images, slices) - _probabilities(eager_twin, images, slices)).abs().max()
    compiled = model_rates(model, images, args.repeats)
    result.update(compiled_ms=compiled["full_ms"], compiled_encoder_ms=compiled["encoder_ms"],
                  gain=eager["full_ms"] / compiled["full_ms"], compile_seconds=compile_seconds,
                  max_probability_difference=float(difference))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
