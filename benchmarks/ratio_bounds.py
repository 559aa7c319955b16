"""How low SAM4EM's cost over its bare encoder per window can go when parts of the method are left out.

Issue 14 asks for SAM4EM (`cpu-small`, 3 classes, full memory bank) at no more than 1.5x its encoder
per window on the 2-core CPU. Each variant here leaves out one more part than the one before it,
starting from the fastest layout (shared memory, joint detail head, joint decoders). A variant without
a part bounds every way of making that part cheaper: no change to the memory (pooled tokens, a coarser
memory, a cheaper mask input) can make the model faster than the same model without a memory.

Usage::

    python benchmarks/ratio_bounds.py [--model cpu-small] [--device cpu] [--window 256] [--batch 8] [--rounds 2]

Random weights (speed does not depend on them). Prints one JSON line per variant and round; the
variants are timed in turn within a round, so a busy moment of the machine shows in one round only.
On CUDA the calls run under bf16 autocast, as `segment` runs there (`model_rates`).
"""

from __future__ import annotations

import json

import torch
from model_options import model_parser  # beside this script

from sam4em.models import build_model
from sam4em.workflows.speed_benchmark import model_rates

# Each variant leaves out what the one before it left out, and one more part.
VARIANTS: dict[str, dict[str, bool]] = {
    "joint decoders (all parts)": {},
    "without the memory": {"memory": False},
    "without the memory and the detail head": {"memory": False, "detail_head": False},
    "also without the second decoder stage": {"memory": False, "detail_head": False, "two_stage": False},
    "also without the feature enhancer": {"memory": False, "detail_head": False, "two_stage": False, "enhancer": False},
}


def main() -> None:
    parser = model_parser(__doc__, repeats=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (the speed profile uses 2)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    models = {}
    for name, removed in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = build_model(
            args.model, 3, pretrained=False, image_size=args.window, joint_decoder=True, **removed
        ).eval().to(device)
    images = torch.rand(args.batch, 1, args.window, args.window, device=device)
    for round_ in range(args.rounds):
        for name, model in models.items():
            rates = model_rates(model, images, args.repeats)
            line = {"round": round_, "variant": name, "model": args.model, "device": str(device), "window": args.window,
                    "batch": args.batch, **{key: round(value, 2) for key, value in rates.items()}}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
