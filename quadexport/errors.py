"""One exception base for every error quadexport raises on purpose.

The CLI prints a :class:`QuadexportError` (and an ``OSError``) as one line and exits 2; anything else is a bug and
keeps its traceback. Subclasses keep the builtin base they always had (``ValueError``, ``FileNotFoundError``, ...)
so ``except ValueError`` in users' code still works.
"""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["QuadexportError", "UsageError", "did_you_mean"]


class QuadexportError(Exception):
    """Base of quadexport's deliberate errors: a message a user can act on, printed without a traceback."""


class UsageError(QuadexportError, ValueError):
    """A bad value, name, file or flag combination given by the user."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` (empty string when nothing is close)."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
