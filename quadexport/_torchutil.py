"""Small torch helpers shared across levels (lowest layer: imports nothing from quadexport)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Single-threaded torch for small probing forwards (MAC counts, shape and exactness checks): on a busy machine
    the intra-op hand-offs of several threads make a batch-1 forward of a small network many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
