"""argparse ``type=`` validators shared by the CLI commands: each parses a string and raises
``argparse.ArgumentTypeError`` (a one-line usage error, exit code 2) for values out of range."""

from __future__ import annotations

import argparse
import math


def finite_float(s: str) -> float:
    """A finite float (no nan/inf)."""
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s} is not a finite number")
    return v


def nonneg_float(s: str) -> float:
    """A finite float >= 0."""
    v = finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s} must be a finite number >= 0")
    return v


def positive_float(s: str) -> float:
    """A finite float > 0."""
    v = finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a finite number > 0")
    return v


def pos_int(s: str) -> int:
    """An integer >= 1."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s} must be >= 1")
    return v


def nonneg_int(s: str) -> int:
    """An integer >= 0."""
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s} must be >= 0")
    return v


__all__ = ["finite_float", "nonneg_float", "nonneg_int", "pos_int", "positive_float"]
