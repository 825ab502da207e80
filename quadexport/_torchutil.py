"""Small torch helpers shared across levels (lowest layer: imports nothing from quadexport)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import torch
from torch import nn

__all__ = ["load_state", "one_thread", "shared_copy"]


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


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> Any:
    """``model.load_state_dict(state, strict)`` for a state dict kept as a plain dict (a checkpoint's, a mapped one).

    ``state_dict()`` carries the modules' versions in its ``_metadata``; a plain dict has none, and a module that
    checks its version refuses it (torchvision's MNASNet: "version should be set to 1 or 2 instead of None"). The
    model's own versions are attached then: the state was saved from a model built by the same code.
    """
    if getattr(state, "_metadata", None) is None:
        own = getattr(model.state_dict(), "_metadata", None)
        state = OrderedDict(state)
        if own is not None:
            state._metadata = own  # type: ignore[attr-defined]
    return model.load_state_dict(state, strict=strict)
