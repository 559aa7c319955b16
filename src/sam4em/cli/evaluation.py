"""`sam4em evaluate` (a prediction against ground truth) and `sam4em measure` (a per-object CSV table)."""

from __future__ import annotations

import argparse

from sam4em.cli.arguments import Subparsers, voxel_size
from sam4em.cli.console import progress_bar


def add_evaluate_parser(sub: Subparsers) -> None:
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
    evaluate.add_argument("--voxel-size", type=voxel_size, help="'Z,Y,X' in nm (default: from the ground-truth file)")
    evaluate.add_argument("--chunk-slices", type=int, default=32, help="slices read at a time")
    evaluate.add_argument("--json", help="write all numbers to this JSON file (a new file, unless --overwrite)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json file (never an input)")
    evaluate.add_argument("--allow-missing-chunks", action="store_true",
                          help="read a Zarr ground truth or mask with missing chunks as their fill value")
    evaluate.add_argument("--allow-absent-classes", action="store_true",
                          help="score classes whose code occurs nowhere in the ground truth (refused as a likely typo)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_measure_parser(sub: Subparsers) -> None:
    measure = sub.add_parser("measure", help="per-object table (size, volume, surface, centroid, box) as CSV")
    measure.add_argument("labels", help="label volume: class codes or instance ids (path:key for containers)")
    measure.add_argument("--out", required=True, help="CSV file to write (atomically)")
    measure.add_argument("--classes", help="class codes, e.g. mito=1,glia=2 (default: a sam4em label output's, else every code)")
    measure.add_argument("--objects", choices=["auto", "ids", "components"], default="auto",
                         help="ids: each value is an object; components: connected components per class "
                              "(default: ids for instance outputs and 32/64-bit labels)")
    measure.add_argument("--probs", help="probability volume (path:key) for each object's mean probability")
    measure.add_argument("--voxel-size", type=voxel_size, help="'Z,Y,X' in nm (default: from the labels file)")
    measure.add_argument("--chunk-z", type=int, default=32, help="slices read at a time")
    measure.add_argument("--connectivity", type=int, choices=[1, 2, 3], default=1, help="components: 1 faces, 3 corners")
    measure.add_argument("--overwrite", action="store_true", help="replace an existing CSV")


def evaluate_command(args: argparse.Namespace) -> int:
    from sam4em.evaluation import evaluate_files, format_table

    results = evaluate_files(
        args.pred, args.gt, classes=args.classes, pred_key=args.pred_key, gt_key=args.gt_key,
        pred_classes=args.pred_classes, mask=args.mask, json_path=args.json, overwrite=args.overwrite,
        allow_missing_chunks=args.allow_missing_chunks, allow_absent_classes=args.allow_absent_classes,
        threshold=args.threshold, voxel_size=args.voxel_size, chunk_slices=args.chunk_slices,
        progress=None if args.no_progress else progress_bar("evaluate"),
    )
    print(format_table(results))
    return 0


def measure_command(args: argparse.Namespace) -> int:
    from sam4em.evaluation.measure_file import measure_file

    out = measure_file(
        args.labels, args.out, classes=args.classes, probabilities=args.probs, voxel_size=args.voxel_size,
        objects=args.objects, chunk_z=args.chunk_z, connectivity=args.connectivity, overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0
