"""CIFAR-style ResNets (He et al. 2016; akamaster/pytorch_resnet_cifar10 layout, as in the ReLinear seed code).

Stem conv 3×3/16 + BN + ReLU, three stages of BasicBlocks (16/32/64 channels, option-A shortcuts: stride-2
subsampling plus zero channel padding), global average pool, linear head. Depth = 6n + 2. The block convs are
quadratic (stem and head stay conventional, as in the seed's QResNet); ``neuron="relu"`` gives the plain ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.layers.mixed import PermShortcut
from quadexport.zoo.common import conv, kaiming_init
from quadexport.errors import UsageError
from quadexport.zoo.registry import register_model
from quadexport.zoo.structure import Group, Shortcut, Structure, out_channels


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channels (parameter-free)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, neuron: str) -> None:
        super().__init__()
        self.conv1 = conv(neuron, in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(neuron, planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n+2``.

    Args:
        depth: 8, 14, 20, 32, 44, 56, 110, ...
        neuron: quadratic neuron type for the block convs, or ``"relu"``.
        num_classes: classifier outputs.
        in_channels: input channels.
    """

    def __init__(self, depth: int, neuron: str = "fan", num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UsageError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, neuron))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def channel_groups(self) -> Structure | None:
        """The permutable channel groups (:mod:`quadexport.zoo.structure`): one per residual stream, one per block's
        ``conv1`` output, plus the option-A shortcuts between streams (``None`` if a block was replaced by an
        unknown module)."""
        groups: list[Group] = []
        shortcuts: list[Shortcut] = []
        cur = Group("stream1", self.conv1.out_channels, [("conv1", "bn1")], [], stream=True)
        for s, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            for j, blk in enumerate(stage):
                if not isinstance(blk, BasicBlock):
                    return None
                name = f"layer{s}.{j}"
                cur.consumers.append(f"{name}.conv1")
                if isinstance(blk.shortcut, (ShortcutA, PermShortcut)):
                    planes = out_channels(blk.conv2)
                    new = Group(f"stream{len(shortcuts) + 2}", planes, [], [], stream=True)
                    pad = blk.shortcut.pad if isinstance(blk.shortcut, ShortcutA) else (planes - cur.channels) // 2
                    shortcuts.append(Shortcut(f"{name}.shortcut", cur.name, new.name, cur.channels, planes, 2, pad))
                    groups.append(cur)
                    cur = new
                elif not isinstance(blk.shortcut, nn.Identity):
                    return None
                groups.append(Group(f"{name}.conv1", out_channels(blk.conv1), [(f"{name}.conv1", f"{name}.bn1")],
                                    [f"{name}.conv2"]))
                cur.producers.append((f"{name}.conv2", f"{name}.bn2"))
        cur.consumers.append("fc")
        groups.append(cur)
        return Structure(groups, shortcuts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.fc(out)


def _make(depth: int):
    def build(neuron: str = "fan", num_classes: int = 10, in_channels: int = 3, input_size=(32, 32)) -> nn.Module:
        return CifarResNet(depth, neuron=neuron, num_classes=num_classes, in_channels=in_channels)

    build.__doc__ = f"CIFAR-style ResNet-{depth} (quadratic block convs unless neuron='relu')."
    return build


for _d in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_d}", family="resnet", depth=_d, input_shape=(3, 32, 32))(_make(_d))
