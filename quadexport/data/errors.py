"""Errors of the dataset readers."""

from __future__ import annotations

from quadexport.errors import QuadexportError

__all__ = ["CorruptDataError", "DatasetNotFoundError"]


class CorruptDataError(QuadexportError, ValueError):
    """A dataset file that exists but cannot be read as what it claims to be (truncated, bad header, wrong shape)."""


class DatasetNotFoundError(QuadexportError, FileNotFoundError):
    """The files of a dataset are not on disk; the message says how to install them."""
