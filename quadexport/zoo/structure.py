"""Channel groups of a model: which layers produce a tensor whose channel order may be permuted and which layers
read it. Zoo models describe themselves through a ``channel_groups()`` method returning a :class:`Structure`.

A *group* is one activation tensor family sharing a channel order: its *producers* write the channels (a layer and
the BatchNorm right after it, if any), its *consumers* read them as input channels. Permuting a group means
permuting the producers' output rows (and their BatchNorms) and the consumers' input columns; the model computes
the same function. In a CIFAR ResNet each stage's residual stream is one group (the stem or the stage's shortcut and
every block's ``conv2`` produce it, every ``conv1`` of the stage and of the next stage's first block, the next
shortcut and the head read it); each block's ``conv1`` output is a group of its own. Option-A shortcuts between two
streams are listed separately: with permuted streams they become :class:`~quadexport.layers.mixed.PermShortcut`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["Group", "Shortcut", "Structure", "out_channels"]


@dataclass
class Group:
    """One permutable channel group.

    Attributes:
        name: readable name (``stream1``, ``layer1.0.conv1`` ...).
        channels: number of channels.
        producers: ``(layer name, BatchNorm name or None)``.
        consumers: names of the layers reading the group (input channels = dim 1 of their weights).
        stream: a residual stream (several producers share the order).
    """

    name: str
    channels: int
    producers: list[tuple[str, str | None]] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    stream: bool = False


@dataclass
class Shortcut:
    """An option-A shortcut from one stream group to the next (subsample ``stride``, zero-pad ``pad`` channels)."""

    name: str
    src: str
    dst: str
    in_channels: int
    out_channels: int
    stride: int
    pad: int


@dataclass
class Structure:
    """Groups and shortcuts of a model (see the module docstring)."""

    groups: list[Group]
    shortcuts: list[Shortcut] = field(default_factory=list)

    def group_of_producer(self) -> dict[str, tuple[Group, str | None]]:
        return {layer: (g, bn) for g in self.groups for layer, bn in g.producers}


def out_channels(m: nn.Module) -> int:
    """Output channels (or features) of a linear, conv, quadratic or mixed layer."""
    return m.out_features if isinstance(m, (nn.Linear,)) or hasattr(m, "out_features") else m.out_channels
