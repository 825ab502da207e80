"""The compressor's error (its own module so the config and the task-loss registry both import it, one way)."""

from __future__ import annotations

from quadexport.errors import QuadexportError

__all__ = ["CompressError"]


class CompressError(QuadexportError, ValueError):
    """A run dir that cannot be compressed, or contradictory options."""
