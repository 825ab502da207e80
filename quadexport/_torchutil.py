"""Small torch helpers shared across levels (lowest layer: imports nothing from quadexport)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["one_thread", "shared_copy"]


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


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose parameters and buffers *share storage* with the original's: new module and
    ``Parameter`` objects (so ``requires_grad``, ``.train()``, swapped submodules, ``.half()`` and rebinding a weight
    leave the original alone), no copy of the weights. Writing into a tensor in place (``w.copy_``) would still reach
    the original: replace tensors instead. Tied weights stay tied."""
    import copy

    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(module, memo)
