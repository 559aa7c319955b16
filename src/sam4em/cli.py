"""The `sam4em` command line: parses arguments and calls the library, nothing more.

Every failure ends with one line naming the file, the problem and the fix, and a non-zero exit
status (2 for bad input, 130 after an interruption); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _pair(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.replace(",", " ").split()]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'Y X' or one number, got {text!r}")
    return parts[0], parts[1]


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

    sub.add_parser("models", help="list the model names build_model and --model accept")
    datasets = sub.add_parser("datasets", help="list the public EM datasets and whether a local copy is found")
    datasets.add_argument("--data-dir", help="local mirror (default: $SAM4EM_DATA_DIR)")

    train = sub.add_parser("train", help="dual-stage fine-tuning from a YAML config")
    train.add_argument("config", help="a YAML training config (see configs/)")
    train.add_argument("--out", required=True, help="run folder: config, metrics, checkpoints, plots, model")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set stage1.steps=50 --set stages=[2]")
    train.add_argument("--preset", default="auto", choices=["auto", "cpu", "gpu-16gb", "gpu-40gb", "gpu-80gb"],
                       help="batch sizes for a device class (default: chosen by the device)")
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
    segment.add_argument("--tile", type=_pair, metavar="'Y X'", help="tile shape (default: the model input minus halos)")
    segment.add_argument("--halo", type=_pair, metavar="'Y X'", help="context on each side of a tile (default: 1/8 of the input)")
    segment.add_argument("--direction", choices=["forward", "backward", "both"], default="both")
    segment.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    segment.add_argument("--block-size", type=int, default=32, help="slices per z-block (the unit of resume and of Dask tasks)")
    segment.add_argument("--min-size", type=int, default=0, help="instances: drop objects smaller than this (voxels)")
    segment.add_argument("--watershed", action="store_true", help="instances: split touching objects")
    segment.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    segment.add_argument("--overwrite", action="store_true", help="replace an existing output (swapped in when complete)")
    segment.add_argument("--resume", action="store_true", help="finish an interrupted output")
    segment.add_argument("--workers", type=int, help="run z-blocks on a local Dask cluster of N processes")
    segment.add_argument("--scheduler", help="run z-blocks on an existing Dask scheduler (SLURM, Kubernetes)")

    evaluate = sub.add_parser("evaluate", help="compare a prediction with ground truth")
    evaluate.add_argument("pred", help="prediction: probabilities (C, Z, Y, X) or (Z, Y, X), or a label map")
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
    evaluate.add_argument("--json", help="write all numbers to this JSON file")

    benchmark = sub.add_parser("benchmark", help="train and evaluate SAM4EM, ablations and baselines on equal terms")
    benchmark.add_argument("--profile", choices=["quick", "full"], default="quick")
    benchmark.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR)")
    benchmark.add_argument("--out", required=True)
    benchmark.add_argument("--methods", help="comma-separated subset")
    benchmark.add_argument("--datasets", help="comma-separated subset")

    demo = sub.add_parser("demo", help="train briefly on Lucchi++, segment, evaluate, write a report (~10 min on CPU)")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--data-dir", help="local mirror of the datasets (default: $SAM4EM_DATA_DIR or ../shared/data)")
    demo.add_argument("--minutes", type=float, default=8.0, help="training budget")
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
        if args.debug or not _is_user_error(error):
            raise
        print(f"sam4em: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _is_user_error(error: BaseException) -> bool:
    # Bad input, missing files and refusals; anything else is a bug and keeps its traceback.
    return isinstance(error, (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError, OSError))


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split())


# -- commands -----------------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> int:
    from sam4em.models.registry import MODELS

    for spec in MODELS.values():
        weights = f"pretrained: {spec.hub_id}" if spec.hub_id else "trained from scratch"
        print(f"{spec.name:24s} {spec.description} ({weights}; input {spec.image_size} px)")
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
    from sam4em.training.trainer import train

    config = load_config(args.config, args.overrides, preset=args.preset)
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    if result.interrupted:
        print(f"sam4em: interrupted; checkpoint saved in {args.out}/checkpoints; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    scores = ", ".join(f"stage {s}: {v:.3f}" for s, v in result.best_scores.items())
    print(f"trained {config.method} in {result.seconds:.0f} s; best validation Dice {scores}; model in {args.out}")
    return 0


def _segment(args: argparse.Namespace) -> int:
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
        tile_shape=args.tile, halo=args.halo, overwrite=args.overwrite, resume=args.resume,
    )
    stop = threading.Event()
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
        "device": args.device,
        "overwrite": args.overwrite,
        "resume": args.resume,
        "min_size": args.min_size,
        "watershed": args.watershed,
    }
    with _stop_on_signals(stop):
        try:
            if args.workers or args.scheduler:
                from sam4em.inference.distributed import segment_to_file_dask

                segment_to_file_dask(
                    input_path, output_path, args.model, workers=args.workers, scheduler_address=args.scheduler,
                    stop=stop, **options,
                )
            else:
                model = load_model(args.model, device=args.device)
                segment_to_file(input_path, output_path, model, stop=stop, progress=_progress_bar("segment"), **options)
        except Interrupted:
            print(f"sam4em: interrupted; finished blocks are in {args.output}; rerun with --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(f"wrote {args.output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from sam4em.data.class_mapping import ClassMapping
    from sam4em.evaluation import evaluate_volumes, format_table
    from sam4em.io import open_volume, parse_path_key

    mapping = ClassMapping.parse(args.classes)
    pred_path, pred_key = parse_path_key(args.pred)
    gt_path, gt_key = parse_path_key(args.gt)
    classes = mapping.single_codes()
    pred_classes = None
    if args.pred_classes:
        pred_classes = ClassMapping.parse(args.pred_classes).single_codes()
    with ExitStack() as stack:
        pred = stack.enter_context(open_volume(pred_path, key=args.pred_key or pred_key))
        gt = stack.enter_context(open_volume(gt_path, key=args.gt_key or gt_key))
        if pred_classes is None and len(pred.shape) == 3 and np.dtype(pred.dtype).kind in "iu":
            # `sam4em segment --output-type labels` numbers the classes 1..C in the order given.
            pred_classes = {name: i + 1 for i, name in enumerate(mapping.names)}
        mask = None
        if args.mask:
            mask_path, mask_key = parse_path_key(args.mask)
            mask = stack.enter_context(open_volume(mask_path, key=mask_key))
        results = evaluate_volumes(
            pred,
            gt,
            classes=classes,
            pred_classes=pred_classes,
            threshold=args.threshold,
            voxel_size=args.voxel_size or gt.voxel_size,
            mask=mask,
            chunk_slices=args.chunk_slices,
            progress=_progress_bar("evaluate"),
        )
    print(format_table(results))
    if args.json:
        _write_json_atomic(Path(args.json), results)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from sam4em.evaluation.benchmark import run_benchmark

    run_benchmark(
        profile=args.profile,
        data_dir=args.data_dir,
        out_dir=args.out,
        methods=args.methods.split(",") if args.methods else None,
        datasets=args.datasets.split(",") if args.datasets else None,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sam4em.demo import run_demo

    report = run_demo(out_dir=args.out, data_dir=args.data_dir, minutes=args.minutes)
    print(f"report: {report}")
    return 0


_COMMANDS = {
    "models": _models,
    "datasets": _datasets,
    "train": _train,
    "segment": _segment,
    "evaluate": _evaluate,
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


def _write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
