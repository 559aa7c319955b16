"""`sam4em benchmark` (methods on equal terms, learning curve, speed) and `sam4em demo` (the whole workflow)."""

from __future__ import annotations

import argparse
import sys

from sam4em.cli.arguments import Subparsers
from sam4em.cli.console import EXIT_INTERRUPTED
from sam4em.training.methods import METHOD_NAMES


def add_benchmark_parser(sub: Subparsers) -> None:
    benchmark = sub.add_parser("benchmark", help="train and evaluate SAM4EM, ablations and baselines on equal terms")
    benchmark.add_argument("--profile", choices=["quick", "full", "learning-curve", "learning-curve-quick", "speed"], default="quick",
                           help="learning-curve: Dice against annotated slices, U-Net vs SAM4EM from scratch vs EM-pretrained; "
                                "speed: slices/s, windows/s, SAM4EM over its encoder, memory, training steps/s")
    benchmark.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR)")
    benchmark.add_argument("--out", required=True)
    benchmark.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHOD_NAMES)} "
                                             "(learning-curve profiles: of their own methods)")
    benchmark.add_argument("--datasets", help="comma-separated subset")
    benchmark.add_argument("--no-progress", action="store_true", help="no progress bars")
    benchmark.add_argument("--device", help="speed profile: cpu, cuda, cuda:1 (default: cuda when available)")


def add_demo_parser(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="train briefly on Lucchi++, segment, evaluate, write a report (~10 min on CPU)")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR, else ../shared/data)")
    demo.add_argument("--minutes", type=float, default=8.0, help="training budget")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def benchmark_command(args: argparse.Namespace) -> int:
    from sam4em.workflows.benchmark import run_benchmark
    from sam4em.workflows.learning_curve import CURVE_PROFILES, run_learning_curve

    try:
        if args.profile == "speed":
            from sam4em.workflows.speed_benchmark import run_speed_benchmark

            print(f"report: {run_speed_benchmark(out_dir=args.out, device=args.device)}")
            return 0
        if args.profile in CURVE_PROFILES:
            report = run_learning_curve(
                profile=args.profile, data_dir=args.data_dir, out_dir=args.out,
                methods=args.methods.split(",") if args.methods else None,
                datasets=args.datasets.split(",") if args.datasets else None,
            )
            print(f"report: {report}")
            return 0
        report = run_benchmark(
            profile=args.profile,
            data_dir=args.data_dir,
            out_dir=args.out,
            methods=args.methods.split(",") if args.methods else None,
            datasets=args.datasets.split(",") if args.datasets else None,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"sam4em: interrupted; finished runs are kept in {args.out}; rerun the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report: {report}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from sam4em.workflows.demo import run_demo

    try:
        report = run_demo(out_dir=args.out, data_dir=args.data_dir, minutes=args.minutes, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"sam4em: interrupted; the training checkpoint is kept in {args.out}; rerun the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report: {report}")
    return 0
