"""argparse ``type=`` validators shared by the CLI commands: each parses a string and raises
``argparse.ArgumentTypeError`` (a one-line usage error, exit code 2) for values out of range."""

from __future__ import annotations

import argparse
import math
from typing import TypeVar

T = TypeVar("T", int, float)


def finite_float(s: str) -> float:
    """A finite float (no nan/inf)."""
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s} is not a finite number")
    return v


def _checked(v: T, ok: bool, s: str, what: str) -> T:
    """``v`` if ``ok``, else a usage error saying what ``s`` must be."""
    if not ok:
        raise argparse.ArgumentTypeError(f"{s} must be {what}")
    return v


def nonneg_float(s: str) -> float:
    """A finite float >= 0."""
    v = finite_float(s)
    return _checked(v, v >= 0, s, "a finite number >= 0")


def positive_float(s: str) -> float:
    """A finite float > 0."""
    v = finite_float(s)
    return _checked(v, v > 0, s, "a finite number > 0")


def pos_int(s: str) -> int:
    """An integer >= 1."""
    v = int(s)
    return _checked(v, v >= 1, s, ">= 1")


def nonneg_int(s: str) -> int:
    """An integer >= 0."""
    v = int(s)
    return _checked(v, v >= 0, s, ">= 0")


__all__ = ["finite_float", "nonneg_float", "nonneg_int", "pos_int", "positive_float"]
