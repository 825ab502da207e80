"""Model registry (torchvision ``_api`` / timm style): ``create_model(name, neuron=...)``, ``list_models()``,
``get_model_info(name)``. Registering a name twice raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from quadexport.errors import UsageError, did_you_mean
from quadexport.layers.neurons import get_neuron
from quadexport.zoo._prune import apply_spec
from quadexport.zoo.usercode import build_recorded, is_user_model

__all__ = ["ModelInfo", "check_model_name", "create_model", "get_model_info", "is_plain_neuron", "list_models",
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


def create_model(name: str, neuron: str = "fan", num_classes: int = 10, in_channels: int = 1,
                 input_size: tuple[int, int] | int = 28, **kwargs) -> nn.Module:
    """Build a zoo model, or a foreign architecture by name.

    Args:
        name: model name (``list_models()``), e.g. ``resnet20``, ``cnn``, ``mlp``; or ``torchvision:<arch>`` /
            ``timm:<arch>`` (:mod:`quadexport.zoo.foreign`: built untrained, stem and head adapted, quadratized
            with the default selection unless ``neuron="relu"``).
        neuron: quadratic neuron type (``list_neurons()``) or ``"relu"`` for the ReLU twin (same builder).
        num_classes: classifier outputs.
        in_channels: input channels (1 for MNIST-family and digits, 3 for CIFAR-10).
        input_size: input height and width (int or pair); the MLP needs it, conv nets are size-agnostic.
        **kwargs: builder-specific options (e.g. ``width`` for mlp/cnn, ``patch_size`` for a timm ViT);
            ``quadratize`` (a spec recorded by :func:`quadexport.quadratize`) rebuilds a quadratized model;
            ``compress`` (a spec recorded by :mod:`quadexport.compress`) then replays the compressor's rewrite.
            ``adopted:<file>:<builder>`` names a model built by the user's own code (``quadexport adopt``): its
            kwargs ``source`` (the file's text and sha256), ``builder``, ``model_args`` and ``adopt`` (the spec of
            :func:`quadexport.adopt`) rebuild it, **running that code** (:mod:`quadexport.zoo.usercode`);
            ``neuron="relu"`` gives its ReLU twin.

    The returned model carries ``model.quadexport_config`` (the arguments needed to rebuild it).
    """
    compress = kwargs.pop("compress", None)  # a compressed architecture (quadexport.compress), whatever built it
    model = _build(name, neuron, num_classes, in_channels, input_size, kwargs)
    if compress is not None:  # replay the compressor's rewrite on the model it rewrote (zoo, foreign, quadratized)
        apply_spec(model, compress)
        model.quadexport_config["compress"] = compress
    return model


def _build(name: str, neuron: str, num_classes: int, in_channels: int, input_size: tuple[int, int] | int,
           kwargs: dict) -> nn.Module:
    """:func:`create_model` before any compression: a quadratized model, a foreign one or a zoo model."""
    spec = kwargs.pop("quadratize", None)
    if spec is not None:  # a quadratized model: its source architecture, then the same layers converted again
        from quadexport.zoo.convert import apply_spec as quadratize_again

        base = spec.get("base_neuron", "relu") if isinstance(spec, dict) else "relu"
        model = quadratize_again(_build(name, base, num_classes, in_channels, input_size, kwargs), spec)
        model.quadexport_config.update(neuron=neuron, quadratize=spec)
        return model
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    config = {"name": name, "neuron": neuron, "num_classes": num_classes, "in_channels": in_channels,
              "input_size": list(size)}
    if is_user_model(name):  # built by the user's own file, recorded in the config (quadexport adopt)
        model = build_recorded(neuron, **kwargs)
        model.quadexport_config = {**config, **kwargs}
        return model
    if not is_plain_neuron(name, neuron):
        get_neuron(neuron)
    if ":" in name:
        from quadexport.zoo.foreign import build_foreign, is_foreign

        if is_foreign(name):
            model = build_foreign(name, neuron, num_classes, in_channels, size, **kwargs)
            model.quadexport_config = {**config, **kwargs}
            return model
    info = get_model_info(name)
    model = info.builder(neuron=neuron, num_classes=num_classes, in_channels=in_channels, input_size=size, **kwargs)
    model.quadexport_config = {**config, **kwargs}
    return model
