"""The parser class of every command, and argument types shared by several: (Y, X) pairs, (Z, Y, X) voxel sizes."""

from __future__ import annotations

import argparse
from typing import NoReturn, TypeAlias

from sam4em.cli.console import EXIT_BAD_INPUT


class Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# What `Parser.add_subparsers` returns (its command parsers are `Parser`s too): each command module adds to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def pair(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.replace(",", " ").split()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'Y X' (two whole numbers) or one for both, got {text!r}")
    return parts[0], parts[1]


class PairAction(argparse.Action):
    """(Y, X) from ``--tile 256 256`` (the micro-sam and nnU-Net form), ``--tile 256,256``, ``--tile '256 256'``
    or ``--tile 256`` (both axes)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, pair(" ".join(values if isinstance(values, list) else [str(values)])))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def voxel_size(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.replace(",", " ").split()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected 'Z,Y,X' in nm, got {text!r}")
    return parts[0], parts[1], parts[2]
