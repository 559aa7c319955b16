"""The command-line options every model-timing script here shares (`compile_gain.py`, `ratio_bounds.py`)."""

from __future__ import annotations

import argparse


def model_parser(doc: str | None, *, repeats: int) -> argparse.ArgumentParser:
    """A parser with --model, --device, --window, --batch and --repeats, described by `doc`'s first line."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser
