"""Command-line interface: ``quadexport [-v|-q|--debug] <command> ...``. Each command lives in its own module here and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args, returning an
exit code).

Output: results go to stdout (printed by the commands); progress and warnings go to stderr through ``logging`` (the
``quadexport`` logger, INFO by default; ``-q`` shows warnings only, ``-v`` adds debug messages, ``--debug`` also
shows the traceback of every error). The global options may come before or after the command.

Errors, in one place (:func:`main`): a :class:`~quadexport.errors.QuadexportError` or an ``OSError`` is a user or
environment error, printed as one line ``quadexport <command>: error: ...`` with exit code 2; ``KeyboardInterrupt``
exits 130; anything else is a bug: its traceback is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from quadexport.cli.argtypes import show_defaults
from quadexport.errors import QuadexportError

# Command modules, in the order shown by --help.
COMMANDS = ("train", "quadratize", "adopt", "export", "check", "bench", "compress", "pipeline", "experiments", "info")
EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130

__all__ = ["CLIError", "COMMANDS", "build_parser", "main"]


class CLIError(QuadexportError):
    """A user error found by the CLI itself: printed as one line on stderr, exit code 2."""


def _add_global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """``-v``, ``-q``, ``--debug`` on the main parser (with defaults) and on every command's parser (without, so
    they may come before or after the command). Option strings a command already uses are left to it."""
    taken = set(p._option_string_actions)
    default = {"default": argparse.SUPPRESS} if suppress else {}
    for flags, kw in ((("-v", "--verbose"), {"action": "count", "dest": "log_verbose",
                                            "help": "more progress output (debug messages)"}),
                      (("-q", "--quiet"), {"action": "count", "dest": "log_quiet",
                                          "help": "no progress output (warnings and results only)"}),
                      (("--debug",), {"action": "store_true", "dest": "debug",
                                      "help": "debug messages and the traceback of every error"})):
        free = [f for f in flags if f not in taken]
        if free:
            p.add_argument(*free, **{**kw, **default})


def build_parser() -> argparse.ArgumentParser:
    from quadexport import __version__

    p = argparse.ArgumentParser(prog="quadexport", description="Train quadratic networks with ReLinear, export to "
                                "ONNX, check onnxruntime parity, benchmark against ReLU baselines.")
    p.add_argument("--version", action="version", version=f"quadexport {__version__}")
    _add_global_options(p, suppress=False)
    p.set_defaults(log_verbose=0, log_quiet=0, debug=False)
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
    for cmd in sub.choices.values():
        show_defaults(cmd)
        _add_global_options(cmd, suppress=True)
    return p


def _log_level(args: argparse.Namespace) -> int:
    """``--debug``: DEBUG; else each ``-v`` counts one step up and each ``-q`` one down from INFO (``-vv``/``-qq``
    stack, ``-v -q`` cancel)."""
    if args.debug:
        return logging.DEBUG
    steps = (args.log_verbose or 0) - (args.log_quiet or 0)
    return logging.DEBUG if steps > 0 else logging.WARNING if steps < 0 else logging.INFO


def _setup_logging(args: argparse.Namespace) -> tuple[logging.Logger, logging.Handler, int, bool]:
    """One stderr handler on the ``quadexport`` logger (replaced on every :func:`main` call, so that in-process
    callers and captured streams see their own ``sys.stderr``); returns what :func:`_restore_logging` needs."""
    logger = logging.getLogger("quadexport")
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    state = (logger, handler, logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(_log_level(args))
    logger.propagate = False
    return state


def _restore_logging(state: tuple[logging.Logger, logging.Handler, int, bool]) -> None:
    logger, handler, level, propagate = state
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quadexport`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    state = _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"quadexport {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (QuadexportError, OSError) as e:  # user and environment errors: one line (traceback with --debug)
        if args.debug:
            traceback.print_exc()
        print(f"quadexport {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - anything else is a bug: keep the traceback
        traceback.print_exc()
        print(f"quadexport {args.command}: internal error ({type(e).__name__}); this is a bug in quadexport, "
              f"please report it with the traceback above", file=sys.stderr)
        return EXIT_BUG
    finally:
        _restore_logging(state)


if __name__ == "__main__":
    sys.exit(main())
