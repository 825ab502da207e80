"""Channel groups of the zoo models: which layers produce a tensor whose channel order may be permuted and which
layers read it.

A *group* is one activation tensor family sharing a channel order: its *producers* write the channels (a layer and
the BatchNorm right after it, if any), its *consumers* read them as input channels. Permuting a group means
permuting the producers' output rows (and their BatchNorms) and the consumers' input columns; the model computes
the same function. In a CIFAR ResNet each stage's residual stream is one group (the stem or the stage's shortcut and
every block's ``conv2`` produce it, every ``conv1`` of the stage and of the next stage's first block, the next
shortcut and the head read it); each block's ``conv1`` output is a group of its own. Option-A shortcuts between two
streams are listed separately: with permuted streams they become :class:`~quadexport.compress.layers.PermShortcut`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from quadexport.layers.quad import QuadLayer


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


def _out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, (nn.Linear,)) or hasattr(m, "out_features") else m.out_channels


def describe(model: nn.Module) -> Structure | None:
    """The :class:`Structure` of a zoo model (CIFAR ResNet, SmallCNN, MLP), or ``None`` for other models (then only
    whole-layer decisions are possible)."""
    from quadexport.compress.layers import PermShortcut
    from quadexport.zoo.resnet import BasicBlock, CifarResNet, ShortcutA
    from quadexport.zoo.small import MLP, SmallCNN

    if isinstance(model, CifarResNet):
        groups: list[Group] = []
        shortcuts: list[Shortcut] = []
        cur = Group("stream1", model.conv1.out_channels, [("conv1", "bn1")], [], stream=True)
        n_stream = 1
        for s, stage in enumerate((model.layer1, model.layer2, model.layer3), start=1):
            for j, blk in enumerate(stage):
                if not isinstance(blk, BasicBlock):
                    return None
                name = f"layer{s}.{j}"
                cur.consumers.append(f"{name}.conv1")
                if isinstance(blk.shortcut, (ShortcutA, PermShortcut)):
                    n_stream += 1
                    planes = _out(blk.conv2)
                    new = Group(f"stream{n_stream}", planes, [], [], stream=True)
                    pad = blk.shortcut.pad if isinstance(blk.shortcut, ShortcutA) else (planes - cur.channels) // 2
                    shortcuts.append(Shortcut(f"{name}.shortcut", cur.name, new.name, cur.channels, planes,
                                              2, pad))
                    groups.append(cur)
                    cur = new
                elif not isinstance(blk.shortcut, nn.Identity):
                    return None
                groups.append(Group(f"{name}.conv1", _out(blk.conv1), [(f"{name}.conv1", f"{name}.bn1")],
                                    [f"{name}.conv2"]))
                cur.producers.append((f"{name}.conv2", f"{name}.bn2"))
        cur.consumers.append("fc")
        groups.append(cur)
        return Structure(groups, shortcuts)
    if isinstance(model, SmallCNN):
        return Structure([Group("conv1", _out(model.conv1), [("conv1", "bn1")], ["conv2"]),
                          Group("conv2", _out(model.conv2), [("conv2", "bn2")], ["conv3"]),
                          Group("conv3", _out(model.conv3), [("conv3", "bn3")], ["fc"])])
    if isinstance(model, MLP):
        return Structure([Group("fc1", _out(model.fc1), [("fc1", None)], ["fc2"]),
                          Group("fc2", _out(model.fc2), [("fc2", None)], ["head"])])
    return None


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
