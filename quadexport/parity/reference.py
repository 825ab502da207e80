"""The source model run in float64: the reference every parity verdict is judged against.

:class:`Float64Reference` keeps a deep copy of the model in ``double()`` (the original is never touched) and runs it
on inputs cast to float64. Where the model cannot run in float64 — a part that computes in float16/bfloat16 whatever
its parameters are, a custom op without a float64 kernel, a model too big to copy — it says why (:attr:`reason`) and
returns ``None``; callers then fall back to the float32 rule.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["Float64Reference", "MAX_BYTES", "as_tuple", "flatten_outputs", "run_many"]

MAX_BYTES = 8 << 30
"""Largest float64 copy (parameters and buffers) made for a reference: beyond it, no float64 reference (a reason)."""


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output in torch's pytree order (tensors; sequences in order; dicts by key order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    return []


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """A model's inputs as a tuple (one tensor becomes a 1-tuple)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _float64_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(8 * t.numel() for t in tensors if t.is_floating_point())


class Float64Reference:
    """A float64 copy of ``model`` (eval mode) that maps inputs to its outputs as a list of float64 tensors.

    Args:
        model: the source model (not modified).
        flatten: maps a model output to its list of tensors (default: :func:`flatten_outputs`).
        max_bytes: largest float64 copy to make (see :data:`MAX_BYTES`).

    Attributes:
        reason: why the model cannot run in float64 (``None`` while it can); once set, calls return ``None``.
    """

    def __init__(self, model: nn.Module, *, flatten: Callable[[Any], list[torch.Tensor]] | None = None,
                 max_bytes: int = MAX_BYTES) -> None:
        self.flatten = flatten or flatten_outputs
        self.reason: str | None = None
        self.model: nn.Module | None = None
        size = _float64_bytes(model)
        if size > max_bytes:
            self.reason = f"the model is too big for a float64 copy ({size / 2**30:.1f} GiB)"
            return
        try:
            self.model = copy.deepcopy(model).double().eval()
        except Exception as e:  # noqa: BLE001 - any failure to copy means: no float64 reference (said why)
            self._fail(f"it cannot be copied to float64 ({type(e).__name__}: {_first_line(e)})")

    @property
    def available(self) -> bool:
        return self.model is not None

    def _fail(self, reason: str) -> None:
        self.reason, self.model = reason, None
        log.info("no float64 reference: %s", reason)

    @torch.no_grad()
    def __call__(self, inputs: Any) -> list[torch.Tensor] | None:
        """Float64 outputs of the model on ``inputs`` (a tensor, an array or a tuple of them), or ``None`` with
        :attr:`reason` set when the model cannot run in float64."""
        if self.model is None:
            return None
        args = tuple(_to_float64(x) for x in as_tuple(inputs))
        try:
            outs = self.flatten(self.model(*args))
        except Exception as e:  # noqa: BLE001 - fp16-only parts, custom ops without a float64 kernel...
            self._fail(f"it does not run in float64 ({type(e).__name__}: {_first_line(e)})")
            return None
        low = sorted({str(t.dtype).replace("torch.", "") for t in outs if t.is_floating_point()
                      and t.dtype != torch.float64})
        if low:
            self._fail(f"a part of it computes in {'/'.join(low)} even in a float64 copy")
            return None
        return [t.detach() for t in outs]


def _to_float64(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    return x


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else ""


def run_many(ref: Float64Reference, batches: Sequence[Any]) -> list[list[torch.Tensor]] | None:
    """:meth:`Float64Reference.__call__` over several batches (``None`` as soon as one cannot run)."""
    out = []
    for b in batches:
        r = ref(b)
        if r is None:
            return None
        out.append(r)
    return out
