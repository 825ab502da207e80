"""argparse ``type=`` validators shared by the CLI commands: each parses a string and raises
``argparse.ArgumentTypeError`` (a one-line usage error, exit code 2) for values out of range."""

from __future__ import annotations

import argparse
import math
from typing import TypeVar

T = TypeVar("T", int, float)

# Copies of library constants, so that building the parser (``--help``) imports neither torch nor onnx;
# tests/test_cli_help.py asserts that each equals the library's.
BUILTIN_DATASETS = ("cifar10", "digits", "fashion-mnist", "mnist")  # quadexport.data.list_datasets()
OPT_LEVELS = ("disable", "basic", "extended", "all")  # quadexport.exporter.session.OPT_LEVELS
BUDGETS = ("small", "short", "tiny")  # quadexport.experiments.BUDGETS
ADAPTER_DEFAULT = "quadratic+bn+head"  # quadexport.training.adapter.ADAPTER_DEFAULT


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


def image_size(s: str) -> tuple[int, int]:
    """``H`` or ``HxW`` (integers >= 1) as ``(height, width)``."""
    parts = s.lower().split("x")
    try:
        hw = [int(v) for v in parts]
    except ValueError:
        hw = []
    if len(hw) not in (1, 2) or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"{s} must be H or HxW, e.g. 32 or 32x48")
    return (hw[0], hw[-1])


def float_list(s: str) -> tuple[float, ...]:
    """Comma-separated finite floats (one per channel), e.g. ``0.5`` or ``0.49,0.48,0.45``."""
    try:
        return tuple(finite_float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s} must be one number or comma-separated numbers, one per channel") \
            from None


def dataset_spec(s: str) -> str:
    """A built-in dataset name, ``imagefolder:PATH`` or ``npz:FILE`` (checked; the string is returned as given)."""
    if s in BUILTIN_DATASETS:  # the common case, without importing quadexport.data (torch)
        return s
    from quadexport.data import parse_dataset_spec
    from quadexport.errors import UsageError

    try:
        parse_dataset_spec(s)
    except UsageError as e:
        raise argparse.ArgumentTypeError(f"invalid choice: {e}") from None
    return s


def model_arg(s: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``4``, ``0.1``, ``[1,1,2]``, ``true``), else text."""
    import json

    key, eq, val = s.partition("=")
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{s} must be KEY=VALUE (e.g. patch_size=4)")
    try:
        return key, json.loads(val)
    except ValueError:
        return key, val


def show_defaults(p: argparse.ArgumentParser) -> None:
    """End every option's help with its default (one rule for all commands; a help that already names its default
    is kept). Switches (``store_true``) and options without a default say nothing."""
    for action in p._actions:
        default = action.default
        if action.help == argparse.SUPPRESS or default == argparse.SUPPRESS or not action.option_strings \
                or isinstance(default, bool) \
                or not isinstance(default, (int, float, str, list, tuple)):
            continue
        if action.help and "default" in action.help:
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        action.help = f"{action.help} (default: {shown})" if action.help else f"default: {shown}"


__all__ = ["ADAPTER_DEFAULT", "BUDGETS", "BUILTIN_DATASETS", "OPT_LEVELS", "dataset_spec", "finite_float",
           "float_list", "image_size", "model_arg", "nonneg_float", "nonneg_int", "pos_int", "positive_float",
           "runtime_help", "show_defaults"]


def runtime_help(what: str) -> str:
    """``--runtime`` help: the registered runtimes, read from the registry (no runtime is imported)."""
    from quadexport.runtimes import list_runtimes

    return (f"runtime to {what}: {', '.join(list_runtimes())}, or MODULE:CLASS for a Runtime subclass of your own "
            "(importable from PYTHONPATH; see docs/architecture.md)")
