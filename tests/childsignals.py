"""Start a child process that a test will interrupt with SIGINT, however the suite itself was launched.

A suite started as a background job (``make test > log 2>&1 &``, ``nohup make test &``) runs with SIGINT ignored,
and an ignored signal stays ignored across ``exec``: the child Python then installs no ``KeyboardInterrupt`` handler
and a test's SIGINT does nothing (the trainer runs to its end and exits 0). The product is right to keep an inherited
"ignore SIGINT"; the tests that send SIGINT start their child with SIGINT at its default disposition instead.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

__all__ = ["popen_interruptible"]


def popen_interruptible(args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` whose child starts with the default SIGINT disposition.

    ``exec`` resets a caught signal to ``SIG_DFL`` but keeps an ignored one, so while this process ignores SIGINT it
    holds Python's own handler for the moment it starts the child (no ``preexec_fn``: that is unsafe with the
    threads torch starts), then ignores SIGINT again.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return subprocess.Popen(args, **kwargs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
