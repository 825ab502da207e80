"""Refuse a model that cannot take a run's input size before any training, naming the smallest size it takes.

A network whose strides and kernels shrink its input below a kernel's size (``timm:convnext_atto`` on 8×8 digits:
stem stride 4, then three 2×2 downsamplings) would fail in its first training step with a torch error and a
traceback. :func:`check_input_size` makes one dry forward pass at the run's size instead (batch 1, eval mode, no
gradients) and, when it fails, finds the smallest square size that works by dry passes at increasing sizes.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quadexport._torchutil import one_thread
from quadexport.errors import UsageError

log = logging.getLogger(__name__)

MAX_SIZE = 1024
"""The largest side :func:`smallest_input_size` tries."""
_SIZE_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError, ZeroDivisionError)  # what torch/timm raise for too small inputs

__all__ = ["MAX_SIZE", "InputSizeError", "check_input_size", "smallest_input_size"]


class InputSizeError(UsageError):
    """The model cannot take the run's input size (the message names the smallest size that works)."""


def _fails(model: nn.Module, channels: int, side: tuple[int, int]) -> BaseException | None:
    """The error of a dry forward pass at ``(1, channels, *side)``, ``None`` when it works."""
    p = next(model.parameters(), None)
    x = torch.zeros((1, channels, *side), device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None and p.is_floating_point() else None)
    try:
        model(x)
    except _SIZE_ERRORS as e:
        return e
    return None


def _dry(fn):
    """Run ``fn(model, ...)`` in eval mode without gradients, one thread; every module's mode is restored."""
    def wrapped(model: nn.Module, *args, **kwargs):
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), one_thread():
                return fn(model, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
    return wrapped


@_dry
def smallest_input_size(model: nn.Module, input_shape: tuple[int, int, int], limit: int = MAX_SIZE) -> int | None:
    """The smallest side ``s >= max(H, W)`` (up to ``limit``) such that ``model`` takes ``(C, s, s)`` inputs, by dry
    forward passes: doubling until one works, then each side between the last failure and it, upwards."""
    c, h, w = input_shape
    lo = max(h, w)
    if _fails(model, c, (h, w)) is None:
        return lo
    hi = lo * 2
    while hi <= limit and _fails(model, c, (hi, hi)) is not None:
        lo, hi = hi, hi * 2
    if hi > limit:
        return None
    return next(s for s in range(lo + 1, hi + 1) if s == hi or _fails(model, c, (s, s)) is None)


@_dry
def _first_error(model: nn.Module, input_shape: tuple[int, int, int]) -> BaseException | None:
    return _fails(model, input_shape[0], tuple(input_shape[1:]))


def check_input_size(model: nn.Module, input_shape: tuple[int, int, int], name: str) -> None:
    """Raise :class:`InputSizeError` (one line: the model, the size, the smallest size that works and the flag to
    pass) unless ``model`` takes ``(C, H, W)`` inputs; a dry forward pass that fails at every size up to
    :data:`MAX_SIZE` is no size problem, and its own error is raised. A token model (:mod:`quadexport.zoo.tokens`)
    is checked against its context instead."""
    from quadexport.zoo.tokens import token_input

    spec = token_input(model)
    if spec is not None:
        if len(input_shape) != 1 or input_shape[0] > spec.context:
            raise InputSizeError(f"{name} takes token windows of at most {spec.context}; the data gives "
                                 f"{tuple(input_shape)} (give the model context={input_shape[0]} or text data)")
        return
    err = _first_error(model, input_shape)
    if err is None:
        return
    c, h, w = input_shape
    side = smallest_input_size(model, input_shape)
    if side is None:
        raise err
    log.debug("%s at %dx%d: %s", name, h, w, str(err).splitlines()[0] if str(err) else type(err).__name__)
    raise InputSizeError(f"{name} cannot take {h}x{w} inputs ({c} channel{'s' if c != 1 else ''}): the smallest "
                         f"size it takes is {side}x{side}; train with --image-size {side}")
