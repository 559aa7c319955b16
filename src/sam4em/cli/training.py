"""`sam4em pretrain` (self-supervised, unlabelled EM), `sam4em train` (fine-tuning from a YAML config) and
`sam4em export-encoder` (a trained run's encoder as a base: a supervised "generalist" encoder)."""

from __future__ import annotations

import argparse
import math
import sys

from sam4em.cli.arguments import Subparsers
from sam4em.cli.console import EXIT_INTERRUPTED


def add_pretrain_parser(sub: Subparsers) -> None:
    pretrain = sub.add_parser("pretrain", help="self-supervised pretraining of the image encoder on unlabelled EM")
    pretrain.add_argument("volumes", nargs="+", metavar="VOLUME",
                          help="unlabelled EM volumes, PATH[:KEY][@Z0-Z1] (e.g. stack.h5:raw@0-7), mixed equally")
    pretrain.add_argument("--out", required=True, help="run folder; usable as `model.base` in `sam4em train` when done")
    pretrain.add_argument("--base", default="cpu-small", help="architecture: cpu-small, test-tiny or sam2.1-hiera-* (default: cpu-small)")
    pretrain.add_argument("--pretrained", action="store_true", help="start from Meta's SAM2.1 weights (domain-adaptive pretraining)")
    pretrain.add_argument("--steps", type=int, help="optimiser steps (with --max-seconds: whichever ends first)")
    pretrain.add_argument("--max-seconds", type=float, help="wall-clock budget; the learning-rate schedule follows it")
    pretrain.add_argument("--batch-size", type=int, default=8)
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--mask-ratio", type=float, default=0.6)
    pretrain.add_argument("--image-size", type=int, help="crop size (default: the base's input size)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_parser(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="dual-stage fine-tuning from a YAML config")
    train.add_argument("config", help="a YAML training config (see configs/)")
    train.add_argument("--out", required=True, help="run folder: config, metrics, checkpoints, plots, model")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set stage1.steps=50 --set stages=[2]")
    train.add_argument("--preset", default="auto", choices=["auto", "cpu", "gpu-16gb", "gpu-40gb", "gpu-80gb"],
                       help="batch sizes, clip length and accumulation for a device class, where the config leaves "
                            "them unset (default: chosen by the device)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_export_encoder_parser(sub: Subparsers) -> None:
    export = sub.add_parser("export-encoder",
                            help="save the image encoder of a trained SAM4EM run as a base for `sam4em train` (a generalist encoder)")
    export.add_argument("run", help="a `sam4em train` run folder of a SAM4EM model")
    export.add_argument("--out", required=True, help="new folder; usable as `model.base` in `sam4em train`")


def export_encoder_command(args: argparse.Namespace) -> int:
    from sam4em.training.encoder_export import export_encoder

    out = export_encoder(args.run, args.out)
    print(f"exported the image encoder of {args.run} to {out}; use it with `model.base: {out}`")
    return 0


def pretrain_command(args: argparse.Namespace) -> int:
    from sam4em.training.pretrain import PretrainSettings, pretrain

    settings = PretrainSettings(
        base=args.base, pretrained=args.pretrained, steps=args.steps, max_seconds=args.max_seconds,
        batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio, image_size=args.image_size, seed=args.seed,
    )
    result = pretrain(args.volumes, args.out, settings, resume=args.resume, progress=not args.no_progress)
    if result.interrupted:
        print(f"sam4em: interrupted; checkpoint saved in {args.out}/checkpoints; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    done = " (already complete: nothing to do)" if result.already_complete else ""
    print(f"pretrained {settings.base} for {result.steps} steps in {result.seconds:.0f} s{done}; final loss "
          f"{result.final_loss:.3f} (mean predictor: 1.0); use it with `model.base: {args.out}`")
    return 0


def train_command(args: argparse.Namespace) -> int:
    from sam4em.training.config import load_config
    from sam4em.training.presets import resolve_preset, resource_values
    from sam4em.training.trainer import train

    preset = resolve_preset(args.preset)
    config = load_config(args.config, args.overrides, preset=preset)
    resources = ", ".join(f"{key}={value}" for key, value in resource_values(config).items())
    # The values are also in the run's config.yaml (section `train`).
    print(f"resources: {resources} (preset {preset} fills what the config and --set leave unset)")
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    if result.interrupted:
        print(f"sam4em: interrupted; checkpoint saved in {args.out}/checkpoints; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    # `seconds` counts this process only: after a resume it is the time since the resume.
    took = f"in {result.seconds:.0f} s" + (" (since the resume)" if args.resume else "")
    if all(math.isnan(v) for v in result.best_scores.values()):  # sparse annotation left no validation slice
        print(f"trained {config.method} {took} without validation (no annotated slice in the validation part); "
              f"the model in {args.out} holds the last weights of stage {config.stages_to_run[-1]}")
        return 0
    scores = ", ".join(f"stage {s}: {v:.3f}" for s, v in result.best_scores.items())
    print(f"trained {config.method} {took}; best validation Dice {scores}; the model in {args.out} "
          f"holds the {result.kept} weights (validation Dice {result.kept_score:.3f} on stage {config.stages_to_run[-1]}'s samples)")
    return 0
