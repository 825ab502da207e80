"""Small models for fast experiments: a quadratic MLP and a small CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.zoo.common import conv, kaiming_init, linear
from quadexport.zoo.registry import register_model
from quadexport.zoo.structure import Group, Structure, out_channels


class MLP(nn.Module):
    """Flatten → quadratic linear → ReLU → quadratic linear → ReLU → linear head.

    Args:
        in_features: flattened input size.
        num_classes: classifier outputs.
        neuron: neuron type or ``"relu"``.
        width: hidden width.
    """

    def __init__(self, in_features: int, num_classes: int, neuron: str, width: int = 64) -> None:
        super().__init__()
        self.fc1 = linear(neuron, in_features, width)
        self.fc2 = linear(neuron, width, width)
        self.head = nn.Linear(width, num_classes)
        kaiming_init(self)

    def channel_groups(self) -> Structure:
        """The permutable channel groups: each hidden layer's output (:mod:`quadexport.zoo.structure`)."""
        return Structure([Group("fc1", out_channels(self.fc1), [("fc1", None)], ["fc2"]),
                          Group("fc2", out_channels(self.fc2), [("fc2", None)], ["head"])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, conv-BN-ReLU, global average pool, linear head (convs quadratic).

    Args:
        in_channels: input channels.
        num_classes: classifier outputs.
        neuron: neuron type or ``"relu"``.
        width: channels of the first conv (then 2×, 2×).
    """

    def __init__(self, in_channels: int, num_classes: int, neuron: str, width: int = 16) -> None:
        super().__init__()
        self.conv1 = conv(neuron, in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(neuron, width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = conv(neuron, 2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)
        kaiming_init(self)

    def channel_groups(self) -> Structure:
        """The permutable channel groups: each conv's output (:mod:`quadexport.zoo.structure`)."""
        return Structure([Group("conv1", out_channels(self.conv1), [("conv1", "bn1")], ["conv2"]),
                          Group("conv2", out_channels(self.conv2), [("conv2", "bn2")], ["conv3"]),
                          Group("conv3", out_channels(self.conv3), [("conv3", "bn3")], ["fc"])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


@register_model("mlp", input_shape=(1, 28, 28), width_arg="width", default_width=64)
def mlp(neuron: str = "fan", num_classes: int = 10, in_channels: int = 1, input_size=(28, 28),
        width: int = 64) -> nn.Module:
    """Two-hidden-layer MLP on flattened inputs."""
    return MLP(in_channels * input_size[0] * input_size[1], num_classes, neuron, width)


@register_model("cnn", input_shape=(1, 28, 28), width_arg="width", default_width=16)
def cnn(neuron: str = "fan", num_classes: int = 10, in_channels: int = 1, input_size=(28, 28),
        width: int = 16) -> nn.Module:
    """Small three-conv CNN."""
    return SmallCNN(in_channels, num_classes, neuron, width)
