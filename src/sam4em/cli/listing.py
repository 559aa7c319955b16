"""`sam4em models` and `sam4em datasets`: what can be used, and what is found locally."""

from __future__ import annotations

import argparse

from sam4em.cli.arguments import Subparsers


def add_models_parser(sub: Subparsers) -> None:
    models = sub.add_parser("models", help="list the model names build_model and --model accept, and pretrained encoders")
    models.add_argument("--runs", default="runs", help="also list `sam4em pretrain` runs found under this folder (default: runs)")


def add_datasets_parser(sub: Subparsers) -> None:
    datasets = sub.add_parser("datasets", help="list the public EM datasets and whether a local copy is found")
    datasets.add_argument("--data-dir", help="local mirror (default: $SAM4EM_DATA_DIR, else ../shared/data)")


def models_command(args: argparse.Namespace) -> int:
    from sam4em.models.encoder_weights import find_encoder_folders, read_pretrain_record
    from sam4em.models.registry import MODELS

    for spec in MODELS.values():
        weights = f"pretrained: {spec.hub_id}" if spec.hub_id else "trained from scratch"
        print(f"{spec.name:24s} {spec.description} ({weights}; input {spec.image_size} px)")
    for folder in find_encoder_folders(args.runs):
        record = read_pretrain_record(folder)
        how = "supervised encoder (sam4em export-encoder)" if record.get("source") == "supervised" else "EM-pretrained encoder (sam4em pretrain)"
        print(f"{folder!s:24s} {how} on {record['base']}")
    return 0


def datasets_command(args: argparse.Namespace) -> int:
    from sam4em.datasets import get_dataset, get_spec, list_datasets, resolve_data_dir, shared_data_dir

    # Where `benchmark` and `demo` look too: the folder given, else $SAM4EM_DATA_DIR, else ../shared/data.
    root = resolve_data_dir(args.data_dir) or shared_data_dir()
    for name in list_datasets():
        try:
            where = str(get_dataset(name, data_dir=root).root)
        except (FileNotFoundError, ValueError):
            where = "not found locally"
        print(f"{name:12s} {get_spec(name).description} [{where}]")
    return 0
