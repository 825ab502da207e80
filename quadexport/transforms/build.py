"""``create_model``: a model by name, with every recorded transform replayed (the public
:func:`quadexport.create_model`).

The zoo (:mod:`quadexport.zoo`) holds the builders; this module rebuilds what a run recorded on top of them: a
quadratized model (``quadratize`` spec, :mod:`quadexport.transforms.convert`), a foreign architecture in quadratic
form (the default selection), a model built by the user's own file with its adopt spec
(:mod:`quadexport.transforms.adopted`), and a compressed architecture (``compress`` spec,
:mod:`quadexport.transforms.prune_spec`), in that order.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

from quadexport.layers.neurons import get_neuron
from quadexport.transforms.adopted import apply_adopt_spec, relu_twin
from quadexport.transforms.convert import apply_spec as quadratize_again
from quadexport.transforms.convert import convert_layers, select_layers
from quadexport.transforms.prune_spec import apply_spec
from quadexport.zoo.foreign import build_foreign, is_foreign
from quadexport.zoo.registry import build_model
from quadexport.zoo.usercode import UserSource, build_user_model, is_user_model

log = logging.getLogger(__name__)

__all__ = ["build_recorded", "create_model"]


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
        base = spec.get("base_neuron", "relu") if isinstance(spec, dict) else "relu"
        model = quadratize_again(_build(name, base, num_classes, in_channels, input_size, kwargs), spec)
        model.quadexport_config.update(neuron=neuron, quadratize=spec)
        return model
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    config = {"name": name, "neuron": neuron, "num_classes": num_classes, "in_channels": in_channels,
              "input_size": list(size)}
    if is_user_model(name):  # built by the user's own file, recorded in the config (quadexport adopt)
        model = build_recorded(neuron, **kwargs)
    elif is_foreign(name):
        if neuron != "relu":
            get_neuron(neuron)
        model = _foreign(name, neuron, num_classes, in_channels, size, dict(kwargs))
    else:
        model = build_model(name, neuron, num_classes, in_channels, size, **kwargs)
    model.quadexport_config = {**config, **kwargs}
    return model


def _foreign(name: str, neuron: str, num_classes: int, in_channels: int, size: tuple[int, int],
             kwargs: dict[str, Any]) -> nn.Module:
    """A foreign architecture, quadratized with the default selection unless ``neuron="relu"`` (``rank`` goes to
    the neuron)."""
    rank = kwargs.pop("rank", None)
    model = build_foreign(name, num_classes, in_channels, size, **kwargs)
    if neuron != "relu":
        sel = select_layers(model)
        convert_layers(model, {n: {"neuron": neuron, "rank": rank} for n in sel.convert})
        log.debug("%s: %d layers quadratic (%s), %d left alone", name, len(sel.convert), neuron, len(sel.skipped))
    return model


def build_recorded(neuron: str, *, source: Mapping[str, Any], builder: str,
                   model_args: Mapping[str, Any] | None = None, adopt: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild a user-code model from what a run recorded (the ``create_model`` path of ``adopted:`` names):
    the user's builder run on the recorded source text (checksum verified), then the recorded adopt spec replayed
    (:func:`quadexport.transforms.adopted.apply_adopt_spec`); ``neuron="relu"``: the ReLU twin of that
    (:func:`quadexport.transforms.adopted.relu_twin`). Weights are the builder's: load the run's state dict
    afterwards."""
    model = build_user_model(UserSource.from_dict(source), builder, model_args).eval()
    if adopt is not None:
        model = apply_adopt_spec(model, adopt)
        if neuron == "relu":
            model = relu_twin(model)
    return model.eval()
