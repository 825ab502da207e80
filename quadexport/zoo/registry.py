"""Model registry (torchvision ``_api`` / timm style): ``create_model(name, neuron=...)``, ``list_models()``,
``get_model_info(name)``. Registering a name twice raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from quadexport.errors import UsageError, did_you_mean
from quadexport.layers.neurons import get_neuron
from quadexport.zoo.usercode import is_user_model

__all__ = ["ModelInfo", "build_model", "check_model_name", "get_model_info", "is_plain_neuron", "list_models",
           "register_model"]


@dataclass(frozen=True)
class ModelInfo:
    """What the tools need to know about a registered model without building it.

    Attributes:
        name: registry name (``resnet20``).
        family: models of one family differ only in depth or width (``resnet``); bench picks MAC-matched baselines
            among a family's members.
        depth: the member's depth within its family (``20``), ``None`` for single-member families.
        input_shape: default ``(C, H, W)`` input.
        width_arg: name of the builder's width keyword (``"width"``) when the family can be widened, else ``None``.
        default_width: that keyword's default value.
        builder: the function that builds the model.
        plain_neurons: ``neuron=`` values besides ``"relu"`` that build a plain (non-quadratic) model
            (``gpt``: ``"gelu"``).
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    depth: int | None = None
    input_shape: tuple[int, int, int] = (1, 28, 28)
    width_arg: str | None = None
    default_width: int | None = None
    plain_neurons: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str | None = None, depth: int | None = None,
                   input_shape: tuple[int, int, int] = (1, 28, 28), width_arg: str | None = None,
                   default_width: int | None = None,
                   plain_neurons: tuple[str, ...] = ()) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``; a name registered twice raises ``UsageError`` (a
    ``ValueError``)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise UsageError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelInfo(name=name, family=family or name, builder=fn, depth=depth,
                                    input_shape=tuple(input_shape), width_arg=width_arg, default_width=default_width,
                                    plain_neurons=tuple(plain_neurons))
        return fn

    return deco


def _sort_key(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(\d*)", name)
    return (m.group(1), int(m.group(2) or 0))


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered model builders (of one family when given), depth-ordered within a family."""
    names = [n for n, i in _REGISTRY.items() if family is None or i.family == family]
    return sorted(names, key=_sort_key)


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; unknown names raise ``UsageError`` with a suggestion."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; known: "
                         f"{', '.join(list_models())} (or torchvision:<arch>, timm:<arch>)") from None


def is_plain_neuron(name: str, neuron: str) -> bool:
    """Whether ``neuron`` builds a plain (non-quadratic) model of ``name``: ``"relu"``, or one of the zoo model's
    :attr:`ModelInfo.plain_neurons` (``gpt``: ``"gelu"``)."""
    return neuron == "relu" or (name in _REGISTRY and neuron in _REGISTRY[name].plain_neurons)


def check_model_name(name: str) -> None:
    """Raise ``UsageError`` (with a suggestion) unless ``name`` is a zoo model or a known ``torchvision:<arch>`` /
    ``timm:<arch>``."""
    if is_user_model(name):  # a run made by `quadexport adopt`: rebuilt from the source its config records
        return
    if ":" in name:
        from quadexport.zoo.foreign import check_foreign_name, is_foreign

        if is_foreign(name):
            check_foreign_name(name)
            return
    get_model_info(name)


def build_model(name: str, neuron: str = "fan", num_classes: int = 10, in_channels: int = 1,
                input_size: tuple[int, int] = (28, 28), **kwargs) -> nn.Module:
    """Build a registered zoo model with its builder (no spec replay: that is
    :func:`quadexport.transforms.build.create_model`, the public ``quadexport.create_model``)."""
    if not is_plain_neuron(name, neuron):
        get_neuron(neuron)
    info = get_model_info(name)
    return info.builder(neuron=neuron, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                        **kwargs)
