"""`sam4em segment`: a volume of any size, streamed block by block, resumable, optionally on Dask."""

from __future__ import annotations

import argparse
import sys
import threading

from sam4em.cli.arguments import PairAction, Subparsers
from sam4em.cli.console import EXIT_INTERRUPTED, library_messages, progress_bar, stop_on_signals


def add_segment_parser(sub: Subparsers) -> None:
    from sam4em.io.formats import output_suffixes_help, supported_suffixes_help

    segment = sub.add_parser("segment", help="segment a volume of any size, streaming, resumable")
    segment.add_argument("input", help=f"EM volume, path:key for containers: {supported_suffixes_help()}")
    segment.add_argument(
        "output",
        help="output volume (.zarr recommended for large volumes; .ome.zarr for OME-Zarr; path:key for containers): "
        + output_suffixes_help(),
    )
    segment.add_argument(
        "--model", required=True, help="a trained run folder (the --out of `sam4em train`), or test-tiny for a smoke test"
    )
    segment.add_argument("--input-key")
    segment.add_argument("--output-key")
    segment.add_argument("--classes", help="comma-separated subset of the model's class names")
    segment.add_argument("--output-type", choices=["probs", "labels", "instances"], default="labels")
    segment.add_argument("--tile", nargs="+", action=PairAction, metavar="N",
                         help="tile shape Y X, or one number for both (default: the model input minus halos)")
    segment.add_argument("--halo", nargs="+", action=PairAction, metavar="N",
                         help="context on each side of a tile, Y X or one number (default: 1/8 of the input)")
    segment.add_argument("--direction", choices=["forward", "backward", "both"], default="both")
    segment.add_argument("--batch-size", type=int, default=8, help="windows of one slice per forward pass (per z-stream)")
    segment.add_argument("--streams", type=int,
                         help="z-blocks advanced in lockstep, each with its own memory: STREAMS x batch-size windows "
                              "per forward pass (default: 1 on a CPU, enough to fill a GPU)")
    segment.add_argument("--block-size", type=int, default=32, help="slices per z-block (the unit of resume and of Dask tasks)")
    segment.add_argument("--min-size", type=int, default=0, help="instances: drop objects smaller than this (voxels)")
    segment.add_argument("--watershed", action="store_true", help="instances: split touching objects")
    segment.add_argument("--ome", action="store_true",
                         help="write OME-Zarr (NGFF) with pyramids and labels/<class> (implied by an .ome.zarr output)")
    segment.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    segment.add_argument("--compile", action="store_true",
                         help="torch.compile the model (its first calls compile, for minutes); meant for GPUs: "
                              "no reliable gain on a CPU")
    segment.add_argument("--overwrite", action="store_true", help="replace an existing output (swapped in when complete)")
    segment.add_argument("--resume", action="store_true", help="finish an interrupted output")
    segment.add_argument("--workers", type=int, help="run z-blocks on a local Dask cluster of N processes")
    segment.add_argument("--scheduler", help="run z-blocks on an existing Dask scheduler (SLURM, Kubernetes)")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")


def segment_command(args: argparse.Namespace) -> int:
    from sam4em.inference.streaming import Interrupted, SegmentOptions, segment_to_file

    distributed = bool(args.workers or args.scheduler)
    options = SegmentOptions(
        input_key=args.input_key,
        output_key=args.output_key,
        classes=args.classes.split(",") if args.classes else None,
        output_type=args.output_type,
        direction=args.direction,
        tile_shape=args.tile,
        halo=args.halo,
        batch_size=args.batch_size,
        streams=args.streams,
        block_size=args.block_size,
        device=args.device,
        overwrite=args.overwrite,
        resume=args.resume,
        min_size=args.min_size,
        watershed=args.watershed,
        ome=args.ome,
        compile=args.compile,
    )
    stop = threading.Event()
    progress = None if args.no_progress else progress_bar("segment")
    with stop_on_signals(stop), library_messages(enabled=progress is not None):
        try:
            if distributed:
                from sam4em.inference.distributed import segment_to_file_dask

                segment_to_file_dask(
                    args.input, args.output, args.model, options, workers=args.workers,
                    scheduler_address=args.scheduler, stop=stop, progress=progress,
                )
            else:  # the library checks the request (check_request) before its (slow) model load
                segment_to_file(args.input, args.output, args.model, options, stop=stop, progress=progress)
        except Interrupted as stopped:
            # The same command: with --overwrite the finished blocks are in a hidden sibling of the output.
            print(f"sam4em: interrupted after {stopped.done} of {stopped.total} z-blocks; to finish {args.output}, "
                  "rerun the same command with --resume added", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(f"wrote {args.output}")
    return 0
