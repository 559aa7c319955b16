"""The `sam4em` command line: parses arguments and calls the library, nothing more.

One module per command group (`listing`, `training`, `segment`, `evaluation`, `workflows`), each with an
``add_<command>_parser(subparsers)`` and a ``<command>_command(args)``; this module puts them together.
Every failure ends with one line naming the file, the problem and the fix, and a non-zero exit
status (2 for bad input, 1 when memory runs out, 130 after an interruption); ``--debug`` shows the
traceback instead. Errors that are not foreseeable failures (bugs) keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sam4em.cli import evaluation, listing, segment, training, workflows
from sam4em.cli.arguments import Parser
from sam4em.cli.console import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sam4em",
        description="Prompt-free 3D segmentation of EM volumes (mitochondria, synapses, glia) with SAM2.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing.add_models_parser(sub)
    training.add_pretrain_parser(sub)
    listing.add_datasets_parser(sub)
    training.add_train_parser(sub)
    training.add_export_encoder_parser(sub)
    segment.add_segment_parser(sub)
    evaluation.add_evaluate_parser(sub)
    evaluation.add_measure_parser(sub)
    workflows.add_benchmark_parser(sub)
    workflows.add_demo_parser(sub)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": listing.models_command,
    "pretrain": training.pretrain_command,
    "datasets": listing.datasets_command,
    "train": training.train_command,
    "export-encoder": training.export_encoder_command,
    "segment": segment.segment_command,
    "evaluate": evaluation.evaluate_command,
    "measure": evaluation.measure_command,
    "benchmark": workflows.benchmark_command,
    "demo": workflows.demo_command,
}


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
