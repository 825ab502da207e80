"""Model registry (timm-style): ``create_model(name, neuron=...)`` and ``list_models()``."""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of the registered model builders."""
    return sorted(_BUILDERS, key=lambda n: (n.rstrip("0123456789"), int(n[len(n.rstrip("0123456789")):] or 0)))


def create_model(name: str, neuron: str = "fan", num_classes: int = 10, in_channels: int = 1,
                 input_size: tuple[int, int] | int = 28, **kwargs) -> nn.Module:
    """Build a zoo model.

    Args:
        name: model name (``list_models()``), e.g. ``resnet20``, ``cnn``, ``mlp``.
        neuron: quadratic neuron type (``list_neurons()``) or ``"relu"`` for the ReLU twin (same builder).
        num_classes: classifier outputs.
        in_channels: input channels (1 for MNIST-family and digits, 3 for CIFAR-10).
        input_size: input height and width (int or pair); the MLP needs it, conv nets are size-agnostic.
        **kwargs: builder-specific options (e.g. ``width`` for mlp/cnn).

    The returned model carries ``model.quadexport_config`` (the arguments needed to rebuild it).
    """
    from quadexport.layers.neurons import get_neuron

    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    if neuron != "relu":
        get_neuron(neuron)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    compress = kwargs.pop("compress", None)  # compressed architecture (quadexport.compress); ignored for ReLU twins
    model = _BUILDERS[name](neuron=neuron, num_classes=num_classes, in_channels=in_channels, input_size=size, **kwargs)
    model.quadexport_config = {"name": name, "neuron": neuron, "num_classes": num_classes,
                               "in_channels": in_channels, "input_size": list(size), **kwargs}
    if compress is not None and neuron != "relu":
        from quadexport.compress.prune import apply_spec

        apply_spec(model, compress)
        model.quadexport_config["compress"] = compress
    return model
