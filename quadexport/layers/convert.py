"""One torch layer → the quadratic layer that computes exactly the same thing (the unit step of
:func:`quadexport.quadratize`).

:func:`to_quadratic` builds a :class:`~quadexport.layers.QuadLinear` / ``QuadConv1d`` / ``QuadConv2d`` with the
torch layer's configuration (groups, dilation, padding and padding mode, bias, device, dtype), copies the trained
weight and bias into the neuron's primary linear branch (``r``) and leaves every other branch at its ReLinear init
(gate ``W_g = 0, b_g = 1``, power branch ``W_b = 0, c = 0``), so the new layer's output equals the old one's.
:func:`unsupported_reason` says why a layer cannot be converted (``None`` when it can).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.neurons import NeuronType, get_neuron
from quadexport.layers.quad import QuadConv1d, QuadConv2d, QuadLayer, QuadLinear

__all__ = ["CONVERTIBLE", "is_linear_map", "primary_branch", "to_quadratic", "unsupported_reason"]

CONVERTIBLE: dict[type[nn.Module], type[QuadLayer]] = {nn.Linear: QuadLinear, nn.Conv1d: QuadConv1d,
                                                       nn.Conv2d: QuadConv2d}
"""torch base class → quadratic layer class (subclasses of the torch classes are converted when they keep the
base class's ``forward``)."""


def is_linear_map(module: nn.Module) -> bool:
    """Whether ``module`` is a torch conv/linear layer (any dimension, transposed and lazy ones included): the
    layers :func:`quadexport.quadratize` considers and either converts or names as unsupported."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear))


def _base(module: nn.Module) -> type[nn.Module] | None:
    return next((b for b in CONVERTIBLE if isinstance(module, b)), None)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a quadratic layer, or ``None`` if :func:`to_quadratic` converts it exactly."""
    base = _base(module)
    if base is None:
        return f"{type(module).__name__} is not supported (only nn.Linear, nn.Conv1d and nn.Conv2d are)"
    return plain_layer_problem(module, base, ("forward", "_conv_forward"))


def plain_layer_problem(module: nn.Module, base: type, methods: tuple[str, ...] = ("forward",)) -> str | None:
    """Why ``module`` (an instance of torch layer class ``base``) is not that plain layer - not initialised, a
    subclass overriding one of ``methods``, parametrized, hooked, or a weight that is no parameter - or ``None``."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy layer not initialised yet (run one forward pass first)"
    for attr in methods:
        own, ref = getattr(type(module), attr, None), getattr(base, attr, None)
        if own is not ref:
            return f"{type(module).__name__} overrides {base.__name__}.{attr} (its output is not a plain {attr})"
    if getattr(module, "parametrizations", None):
        return "weight is parametrized (torch.nn.utils.parametrize)"
    if module._forward_hooks or module._forward_pre_hooks:
        return "has forward hooks (e.g. old-style weight_norm or spectral_norm), which a new layer would drop"
    if not isinstance(module.weight, nn.Parameter):
        return "weight is not a plain parameter"
    return None


def primary_branch(nt: NeuronType) -> str:
    """The branch of neuron type ``nt`` that holds a converted layer's weights: its first branch that reads ``x``,
    is full-size and not quadratic (``r`` for every built-in type that has one).

    Raises:
        UsageError: the type has no such branch or its init is not the layer itself (``t2``: only ``W (x*x)``).
    """
    br = next((b for b in nt.branches if b.input == "x" and b.kind == "full" and not b.quadratic), None)
    if br is None or not nt.relu_equivalent_init:
        ok = ", ".join(n for n in _exact_neurons())
        raise UsageError(f"neuron {nt.name!r} has no linear branch that can carry the trained weights unchanged; "
                         f"quadratize with one of: {ok}")
    return br.name


def _exact_neurons() -> list[str]:
    from quadexport.layers.neurons import list_neurons

    out = []
    for n in list_neurons():
        nt = get_neuron(n)
        if nt.relu_equivalent_init and any(b.input == "x" and b.kind == "full" and not b.quadratic
                                           for b in nt.branches):
            out.append(n)
    return out


def _layer_kwargs(module: nn.Module) -> dict[str, Any]:
    factory = {"device": module.weight.device, "dtype": module.weight.dtype, "bias": module.bias is not None}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features, **factory}
    return {"in_channels": module.in_channels, "out_channels": module.out_channels,
            "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
            "dilation": module.dilation, "groups": module.groups, "padding_mode": module.padding_mode, **factory}


@torch.no_grad()
def to_quadratic(module: nn.Module, neuron: str = "fan", rank: int | None = None) -> QuadLayer:
    """The quadratic layer that computes exactly what ``module`` computes, with room for quadratic terms.

    Args:
        module: an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (or a subclass keeping the base ``forward``).
        neuron: quadratic neuron type (one whose ReLinear init reduces to its ``r`` branch: fan, compact, t4, qres,
            quadralib, ...).
        rank: rank of the quadratic terms for neuron types that take one (``"lowrank"``); ``None`` = the type's
            default.

    Returns:
        A new layer on ``module``'s device and dtype, in ``module``'s train/eval mode; ``r`` holds ``module``'s
        weight and bias (same ``requires_grad``), the other branches are at their ReLinear init.

    Raises:
        UsageError: ``module`` cannot be converted (:func:`unsupported_reason`), or ``neuron``/``rank`` do not fit.
    """
    reason = unsupported_reason(module)
    if reason is not None:
        raise UsageError(f"cannot quadratize {type(module).__name__}: {reason}")
    nt = get_neuron(neuron)
    primary = primary_branch(nt)
    cls = CONVERTIBLE[_base(module)]
    kwargs = _layer_kwargs(module)
    if rank is not None:
        kwargs["rank"] = int(rank)
    try:
        layer = cls(neuron=neuron, **kwargs)
    except TypeError as e:
        if rank is not None and "rank" in str(e):
            raise UsageError(f"neuron {neuron!r} takes no rank (rank= is for low-rank neuron types)") from None
        raise
    dst = getattr(layer, primary)
    dst.weight.copy_(module.weight)
    dst.weight.requires_grad_(module.weight.requires_grad)
    if module.bias is not None:
        dst.bias.copy_(module.bias)
        dst.bias.requires_grad_(module.bias.requires_grad)
    return layer.train(module.training)
