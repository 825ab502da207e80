"""Decomposed export: every quadratic layer becomes standard ONNX ops (``Conv``/``Gemm``, ``Mul``, ``Add``).

The layers' own ``forward`` already is that decomposition (one linear map per branch, ``x*x`` as ``Mul``, never
``Pow``). The one choice made here is *how* a dense layer's branches are laid out, picked by measurement
(``tools/measure_decomposition.py``, numbers in ``docs/export.md``):

- conv layers: one ``Conv`` per branch ("naive"). Stacking ``[W_r; W_g]`` into one ``Conv`` + ``Split`` is
  20-50 % slower under onnxruntime because ``Split`` breaks the NCHWc layout chain of ``ORT_ENABLE_ALL``.
- dense layers: also one ``Gemm`` per branch by default. Stacking the branches that read ``x`` (``r``, ``g``, ``l``)
  into one ``Gemm`` whose output is split (:class:`StackedQuadLinear`, ``stack_linear=True``) was within noise at
  width 512 and 40 % slower for the zoo MLP (width 64) at batch 1, so it is opt-in.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.layers.quad import QuadLayer, QuadLinear

Tensor = torch.Tensor

STACK_LINEAR = False
"""Measured default for dense layers (see module docstring); ``export(..., stack_linear=...)`` overrides it."""

__all__ = ["STACK_LINEAR", "StackedQuadLinear", "prepare_decomposed", "replace_modules"]


def replace_modules(model: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replace submodules in place: ``fn(qualified_name, module)`` returns a replacement or ``None`` (keep, and
    recurse into it). Returns the number of replacements."""
    count = 0

    def visit(parent: nn.Module, prefix: str) -> None:
        nonlocal count
        for name, child in list(parent.named_children()):
            qname = f"{prefix}.{name}" if prefix else name
            new = fn(qname, child)
            if new is None:
                visit(child, qname)
            else:
                setattr(parent, name, new)
                count += 1

    visit(model, "")
    return count


def _bias(m: nn.Linear) -> Tensor:
    return m.bias.detach() if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype)


class StackedQuadLinear(nn.Module):
    """Export-only form of a :class:`QuadLinear`: the branches that read ``x`` share one ``Gemm`` (weights stacked
    along the output axis), the ``x*x`` branch keeps its own; the neuron's ``combine`` is applied unchanged.

    Args:
        layer: the quadratic dense layer (its parameters are copied, the layer is not modified).
    """

    def __init__(self, layer: QuadLinear) -> None:
        super().__init__()
        nt = layer.neuron_type
        self.combine = nt.combine
        self.stacked = tuple(b.name for b in nt.branches if b.input == "x")
        self.square = tuple(b.name for b in nt.branches if b.input == "x2")
        mods = [getattr(layer, n) for n in self.stacked]
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in mods]), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([_bias(m) for m in mods]), requires_grad=False)
        self.out_features = layer.out_features
        for n in self.square:
            setattr(self, n, getattr(layer, n))

    def forward(self, x: Tensor) -> Tensor:
        outs = dict(zip(self.stacked, F.linear(x, self.weight, self.bias).split(self.out_features, dim=-1)))
        if self.square:
            x2 = x * x
            for n in self.square:
                outs[n] = getattr(self, n)(x2)
        return self.combine(outs)


def prepare_decomposed(model: nn.Module, stack_linear: bool = STACK_LINEAR) -> nn.Module:
    """Swap in the export forms of the decomposed mode (in place; call it on a copy).

    Args:
        model: the model (already a deep copy, in eval mode).
        stack_linear: stack the ``x`` branches of dense quadratic layers (:class:`StackedQuadLinear`).
    """
    if stack_linear:
        def swap(_: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, QuadLinear) and sum(b.input == "x" for b in m.neuron_type.branches) > 1:
                return StackedQuadLinear(m)
            return m if isinstance(m, QuadLayer) else None

        replace_modules(model, swap)
    return model
