"""The `sam4em` command line: parses arguments and calls the library, nothing more.

Every failure ends with one line naming the file, the problem and the fix, and a non-zero exit
status (2 for bad input, 1 when memory runs out, 130 after an interruption); ``--debug`` shows the
traceback instead. Errors that are not foreseeable failures (bugs) keep their traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _pair(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'Y X' (two whole numbers) or one for both, got {text!r}")
    return parts[0], parts[1]


class _PairAction(argparse.Action):
    """(Y, X) from ``--tile 256 256`` (the micro-sam and nnU-Net form), ``--tile 256,256``, ``--tile '256 256'``
    or ``--tile 256`` (both axes)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, _pair(" ".join(values if isinstance(values, list) else [str(values)])))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def _voxel_size(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.replace(",", " ").split()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected 'Z,Y,X' in nm, got {text!r}")
    return parts[0], parts[1], parts[2]


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error (argparse prints the usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sam4em",
        description="Prompt-free 3D segmentation of EM volumes (mitochondria, synapses, glia) with SAM2.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list the model names build_model and --model accept, and pretrained encoders")
    models.add_argument("--runs", default="runs", help="also list `sam4em pretrain` runs found under this folder (default: runs)")

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
    datasets = sub.add_parser("datasets", help="list the public EM datasets and whether a local copy is found")
    datasets.add_argument("--data-dir", help="local mirror (default: $SAM4EM_DATA_DIR)")

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

    segment = sub.add_parser("segment", help="segment a volume of any size, streaming, resumable")
    segment.add_argument("input", help="EM volume: .tif, slice folder, .h5, .zarr, .n5, .mrc (path:key for containers)")
    segment.add_argument("output", help="output volume (.zarr recommended for large volumes; path:key for containers)")
    segment.add_argument("--model", required=True, help="a trained run folder or a model name (see `sam4em models`)")
    segment.add_argument("--input-key")
    segment.add_argument("--output-key")
    segment.add_argument("--classes", help="comma-separated subset of the model's class names")
    segment.add_argument("--output-type", choices=["probs", "labels", "instances"], default="labels")
    segment.add_argument("--tile", nargs="+", action=_PairAction, metavar="N",
                         help="tile shape Y X, or one number for both (default: the model input minus halos)")
    segment.add_argument("--halo", nargs="+", action=_PairAction, metavar="N",
                         help="context on each side of a tile, Y X or one number (default: 1/8 of the input)")
    segment.add_argument("--direction", choices=["forward", "backward", "both"], default="both")
    segment.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    segment.add_argument("--block-size", type=int, default=32, help="slices per z-block (the unit of resume and of Dask tasks)")
    segment.add_argument("--min-size", type=int, default=0, help="instances: drop objects smaller than this (voxels)")
    segment.add_argument("--watershed", action="store_true", help="instances: split touching objects")
    segment.add_argument("--ome", action="store_true",
                         help="write OME-Zarr (NGFF) with pyramids and labels/<class> (implied by an .ome.zarr output)")
    segment.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    segment.add_argument("--overwrite", action="store_true", help="replace an existing output (swapped in when complete)")
    segment.add_argument("--resume", action="store_true", help="finish an interrupted output")
    segment.add_argument("--workers", type=int, help="run z-blocks on a local Dask cluster of N processes")
    segment.add_argument("--scheduler", help="run z-blocks on an existing Dask scheduler (SLURM, Kubernetes)")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="compare a prediction with ground truth")
    evaluate.add_argument("pred", help="prediction: any `sam4em segment` output (probs, labels, instances; all classes at "
                                       "once), or a probability map, mask or label map (path:key for containers)")
    evaluate.add_argument("gt", help="ground-truth label volume")
    evaluate.add_argument("--pred-key")
    evaluate.add_argument("--gt-key")
    evaluate.add_argument("--classes", required=True, help="ground-truth codes, e.g. mito=255 or mito=191,synapse=223")
    evaluate.add_argument("--pred-classes", help="codes of the classes in a label-map prediction (default: 1..C in --classes order, as "
                               "`sam4em segment --output-type labels` writes; e.g. mito=255 for a 0/255 mask)")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="for probability predictions")
    evaluate.add_argument("--mask", help="evaluate only where this volume is non-zero (path or path:key)")
    evaluate.add_argument("--voxel-size", type=_voxel_size, help="'Z,Y,X' in nm (default: from the ground-truth file)")
    evaluate.add_argument("--chunk-slices", type=int, default=32, help="slices read at a time")
    evaluate.add_argument("--json", help="write all numbers to this JSON file (a new file, unless --overwrite)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json file (never an input)")
    evaluate.add_argument("--allow-missing-chunks", action="store_true",
                          help="read a Zarr ground truth or mask with missing chunks as their fill value")
    evaluate.add_argument("--allow-absent-classes", action="store_true",
                          help="score classes whose code occurs nowhere in the ground truth (refused as a likely typo)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    measure = sub.add_parser("measure", help="per-object table (size, volume, surface, centroid, box) as CSV")
    measure.add_argument("labels", help="label volume: class codes or instance ids (path:key for containers)")
    measure.add_argument("--out", required=True, help="CSV file to write (atomically)")
    measure.add_argument("--classes", help="class codes, e.g. mito=1,glia=2 (default: a sam4em label output's, else every code)")
    measure.add_argument("--objects", choices=["auto", "ids", "components"], default="auto",
                         help="ids: each value is an object; components: connected components per class "
                              "(default: ids for instance outputs and 32/64-bit labels)")
    measure.add_argument("--probs", help="probability volume (path:key) for each object's mean probability")
    measure.add_argument("--voxel-size", type=_voxel_size, help="'Z,Y,X' in nm (default: from the labels file)")
    measure.add_argument("--chunk-z", type=int, default=32, help="slices read at a time")
    measure.add_argument("--connectivity", type=int, choices=[1, 2, 3], default=1, help="components: 1 faces, 3 corners")
    measure.add_argument("--overwrite", action="store_true", help="replace an existing CSV")

    benchmark = sub.add_parser("benchmark", help="train and evaluate SAM4EM, ablations and baselines on equal terms")
    benchmark.add_argument("--profile", choices=["quick", "full", "learning-curve", "learning-curve-quick", "speed"], default="quick",
                           help="learning-curve: Dice against annotated slices, U-Net vs SAM4EM from scratch vs EM-pretrained; "
                                "speed: slices/s, windows/s, SAM4EM over its encoder, memory, training steps/s")
    benchmark.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR)")
    benchmark.add_argument("--out", required=True)
    benchmark.add_argument("--methods", help="comma-separated subset")
    benchmark.add_argument("--datasets", help="comma-separated subset")
    benchmark.add_argument("--no-progress", action="store_true", help="no progress bars")
    benchmark.add_argument("--device", help="speed profile: cpu, cuda, cuda:1 (default: cuda when available)")

    demo = sub.add_parser("demo", help="train briefly on Lucchi++, segment, evaluate, write a report (~10 min on CPU)")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR, else ../shared/data)")
    demo.add_argument("--minutes", type=float, default=8.0, help="training budget")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _version() -> str:
    from sam4em import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sam4em: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            raise
        if _is_out_of_memory(error):
            print(f"sam4em: error: out of memory ({_one_line(error)[:160]}); lower the batch size (segment: "
                  "--batch-size, --block-size; train: --set stageN.batch_size=...) or use a larger machine",
                  file=sys.stderr)
            return EXIT_FAILED
        if not _is_user_error(error):
            raise
        print(f"sam4em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _is_user_error(error: BaseException) -> bool:
    """One line, exit 2: sam4em's refusals (`Sam4emError`, and the ValueError and KeyError its older
    checks raise) and failures of the environment (OSError: missing files, permissions, a full disk,
    a lost mount). Anything else (TypeError, AttributeError, RuntimeError, AssertionError, ...) is a
    bug and keeps its traceback; foreseeable library failures are turned into `Sam4emError` where
    they happen (devices: `sam4em.devices`; weight files: `sam4em.models.checkpoint_files`)."""
    from sam4em.errors import Sam4emError

    return isinstance(error, (Sam4emError, ValueError, KeyError, OSError))


def _is_out_of_memory(error: BaseException) -> bool:
    """Host or GPU memory exhausted: the machine's limit, not a bug (exit 1, one line with the fix)."""
    torch = sys.modules.get("torch")  # only a run that imported torch can run out of GPU memory
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError))


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split())


# -- commands -----------------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> int:
    from sam4em.models.encoder_weights import find_encoder_folders, read_pretrain_record
    from sam4em.models.registry import MODELS

    for spec in MODELS.values():
        weights = f"pretrained: {spec.hub_id}" if spec.hub_id else "trained from scratch"
        print(f"{spec.name:24s} {spec.description} ({weights}; input {spec.image_size} px)")
    for folder in find_encoder_folders(args.runs):
        print(f"{folder!s:24s} EM-pretrained encoder on {read_pretrain_record(folder)['base']} (sam4em pretrain)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from sam4em.training.pretrain import PretrainSettings, pretrain

    settings = PretrainSettings(
        base=args.base, pretrained=args.pretrained, steps=args.steps, max_seconds=args.max_seconds,
        batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio, image_size=args.image_size, seed=args.seed,
    )
    result = pretrain(args.volumes, args.out, settings, resume=args.resume, progress=not args.no_progress)
    if result.interrupted:
        print(f"sam4em: interrupted; checkpoint saved in {args.out}/checkpoints; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"pretrained {settings.base} for {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.3f} "
          f"(mean predictor: 1.0); use it with `model.base: {args.out}`")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from sam4em.datasets import get_dataset, get_spec, list_datasets

    for name in list_datasets():
        try:
            where = str(get_dataset(name, data_dir=args.data_dir).root)
        except (FileNotFoundError, ValueError):
            where = "not found locally"
        print(f"{name:12s} {get_spec(name).description} [{where}]")
    return 0


def _train(args: argparse.Namespace) -> int:
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
    scores = ", ".join(f"stage {s}: {v:.3f}" for s, v in result.best_scores.items())
    print(f"trained {config.method} in {result.seconds:.0f} s; best validation Dice {scores}; the model in {args.out} "
          f"holds the {result.kept} weights (validation Dice {result.kept_score:.3f} on stage {config.stages[-1]}'s samples)")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from sam4em.devices import default_device
    from sam4em.inference.streaming import Interrupted, segment_to_file
    from sam4em.io import parse_path_key
    from sam4em.models import load_model
    from sam4em.safety import check_segment_args

    input_path, input_key = parse_path_key(args.input)
    output_path, output_key = parse_path_key(args.output)
    # Refuse bad paths, keys, classes, tiles and a too-full disk before the (slow) model load.
    check_segment_args(
        input_path, output_path, args.model, input_key=args.input_key or input_key,
        classes=args.classes.split(",") if args.classes else None, output_type=args.output_type,
        tile_shape=args.tile, halo=args.halo, overwrite=args.overwrite, resume=args.resume, device=args.device,
    )
    stop = threading.Event()
    progress = None if args.no_progress else _progress_bar("segment")
    distributed = bool(args.workers or args.scheduler)
    # One process: CUDA when present (the workers of a Dask cluster choose their own, cpu unless --device).
    device = args.device or (None if distributed else str(default_device()))
    options = {
        "input_key": args.input_key or input_key,
        "output_key": args.output_key or output_key,
        "classes": args.classes.split(",") if args.classes else None,
        "output_type": args.output_type,
        "direction": args.direction,
        "tile_shape": args.tile,
        "halo": args.halo,
        "batch_size": args.batch_size,
        "block_size": args.block_size,
        "device": device,
        "overwrite": args.overwrite,
        "resume": args.resume,
        "min_size": args.min_size,
        "watershed": args.watershed,
        "ome": args.ome,
    }
    with _stop_on_signals(stop), _library_messages(enabled=progress is not None):
        try:
            if distributed:
                from sam4em.inference.distributed import segment_to_file_dask

                segment_to_file_dask(
                    input_path, output_path, args.model, workers=args.workers, scheduler_address=args.scheduler,
                    stop=stop, progress=progress, **options,
                )
            else:
                model = load_model(args.model, device=device)
                segment_to_file(input_path, output_path, model, stop=stop, progress=progress, **options)
        except Interrupted:
            print(f"sam4em: interrupted; finished blocks are in {args.output}; rerun with --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(f"wrote {args.output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sam4em.evaluation import evaluate_files, format_table

    results = evaluate_files(
        args.pred, args.gt, classes=args.classes, pred_key=args.pred_key, gt_key=args.gt_key,
        pred_classes=args.pred_classes, mask=args.mask, json_path=args.json, overwrite=args.overwrite,
        allow_missing_chunks=args.allow_missing_chunks, allow_absent_classes=args.allow_absent_classes,
        threshold=args.threshold, voxel_size=args.voxel_size, chunk_slices=args.chunk_slices,
        progress=None if args.no_progress else _progress_bar("evaluate"),
    )
    print(format_table(results))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from sam4em.evaluation.benchmark import run_benchmark
    from sam4em.evaluation.learning_curve import CURVE_PROFILES, run_learning_curve

    try:
        if args.profile == "speed":
            from sam4em.evaluation.speed_benchmark import run_speed_benchmark

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


def _demo(args: argparse.Namespace) -> int:
    from sam4em.demo import run_demo

    try:
        report = run_demo(out_dir=args.out, data_dir=args.data_dir, minutes=args.minutes, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"sam4em: interrupted; the training checkpoint is kept in {args.out}; rerun the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report: {report}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from sam4em.evaluation.measure_file import measure_file

    out = measure_file(
        args.labels, args.out, classes=args.classes, probabilities=args.probs, voxel_size=args.voxel_size,
        objects=args.objects, chunk_z=args.chunk_z, connectivity=args.connectivity, overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


_COMMANDS = {
    "models": _models,
    "pretrain": _pretrain,
    "datasets": _datasets,
    "train": _train,
    "segment": _segment,
    "evaluate": _evaluate,
    "measure": _measure,
    "benchmark": _benchmark,
    "demo": _demo,
}


# -- helpers ------------------------------------------------------------------------------------
class _stop_on_signals:
    """SIGINT/SIGTERM set `event`; the library flushes finished blocks and raises `Interrupted`."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.previous: dict[int, object] = {}

    def __enter__(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.getsignal(s)
            signal.signal(s, lambda *_: self.event.set())

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@contextmanager
def _library_messages(*, enabled: bool) -> Iterator[None]:
    """The library's INFO messages (the device a segmentation runs on) as ``sam4em: ...`` lines on stderr."""
    if not enabled:
        yield
        return
    logger, handler = logging.getLogger("sam4em"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sam4em: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _progress_bar(description: str):
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


if __name__ == "__main__":
    raise SystemExit(main())
