"""Command-line interface: ``quadexport <command> ...``. Each command lives in its own module here and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args, returning an exit
code)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Command modules, in the order shown by --help.
COMMANDS = ("train", "quadratize", "export", "check", "bench", "compress", "pipeline", "experiments", "info")


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from quadexport import __version__

    p = argparse.ArgumentParser(prog="quadexport", description="Train quadratic networks with ReLinear, export to "
                                "ONNX, check onnxruntime parity, benchmark against ReLU baselines.")
    p.add_argument("--version", action="version", version=f"quadexport {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"quadexport.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"quadexport.cli.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quadexport`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError) as e:  # user errors: bad values, files, disk; one line, exit 2
        print(f"quadexport {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
