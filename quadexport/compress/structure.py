"""Channel groups for compression: :func:`describe` asks a model for its :class:`Structure` (zoo models implement
``channel_groups()``, see :mod:`quadexport.zoo.structure`), :func:`permutable` says whether a group's layers allow a
channel permutation."""

from __future__ import annotations

from torch import nn

from quadexport.layers.quad import QuadLayer
from quadexport.zoo.structure import Group, Shortcut, Structure


def describe(model: nn.Module) -> Structure | None:
    """The :class:`Structure` of a model that describes its channel groups (``model.channel_groups()``: CIFAR
    ResNet, SmallCNN, MLP), or ``None`` for other models (then only whole-layer decisions are possible)."""
    groups = getattr(model, "channel_groups", None)
    return groups() if callable(groups) else None


def permutable(model: nn.Module, group: Group) -> bool:
    """Whether every layer of ``group`` can have its channels permuted (quadratic layers with grouped/depthwise
    branches cannot: their output channel ``o`` is tied to input channel ``o // multiplier``)."""
    mods = dict(model.named_modules())
    for name in [p for p, _ in group.producers] + group.consumers:
        m = mods[name]
        if isinstance(m, QuadLayer):
            for br in m.neuron_type.branches:
                if getattr(getattr(m, br.name), "groups", 1) != 1:
                    return False
        elif getattr(m, "groups", 1) != 1:
            return False
        elif not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return False
    return True


__all__ = ["Group", "Shortcut", "Structure", "describe", "permutable"]
