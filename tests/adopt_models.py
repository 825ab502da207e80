"""Quadratic networks written the way public research code writes them (issue #22), for the adopt tests and the
``quadexport adopt tests/adopt_models.py:BUILDER`` CLI tests. The project's own modules, in the styles described in
docs of the seed repositories (see /work/shared/notes/foreign-quadratic-forms.md): a quadratic neuron is never a
class here, it is plain ``nn.Conv2d``/``nn.Linear`` layers combined inside ``forward``.

Builders (all take ``num_classes`` and ``in_channels``; ``INPUT_SHAPES`` gives each one's example input shape):

- ``qresnet20`` / ``qresnet(depth)``: the ReLinear authors' inline QResNet (``conv1r(x) * conv1g(x) +
  conv1b(x.pow(2))``, BN after the sum, option-A ``lambda``/``F.pad`` shortcut, in-place shortcut add).
- ``quadralib_net``: QuadraLib blocks ``torch.mul(bn1(conv1(x)), bn2(conv2(x))) + bn3(conv3(x))``.
- ``compact_net``: ``conv_r(x) + conv_b(x.pow(2))`` (grouped, dilated convs; the square first in one layer).
- ``t2_net``: ``conv(x * x)``; ``t4_net``: ``torch.mul(conv1(x), conv2(x))``; ``qres_net``: ``a * conv2(x) + a``.
- ``fan_mlp``: Linear fan neurons, squares written ``x ** 2`` and ``torch.square``, operands in either order.
- ``relu_factor_net``: a product with a relu inside one factor (must be left alone).
- ``partial_net``: plain conv layers and one quadratic layer.
- ``stride_mismatch_net`` / ``stride_mismatch_net1d``: factors whose convs differ in stride (left alone).
- ``fan_net1d`` / ``t4_net1d``: Conv1d neurons (stride, dilation, groups; ``torch.mul(x, x)``, ``x * x``).

Helpers: :func:`randomize` (random non-ReLinear gates and power terms at a small scale, BN statistics from N(0,1)
inputs, eval mode), :func:`save_dataparallel_checkpoint` (``{'state_dict': {'module.' + k: v}, 'best_prec1',
'epoch'}``, optionally with an ``argparse.Namespace`` and numpy scalars, as the research training scripts save).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------------------------------- QResNet
class LambdaLayer(nn.Module):
    """Calls a stored function (the research code's option-A shortcut holder)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class QBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1r = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.conv1g = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.conv1b = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2r = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2g = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2b = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                                        "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1r(x) * self.conv1g(x) + self.conv1b(x.pow(2))
        out = F.relu(self.bn1(out))
        out = self.bn2(self.conv2r(out) * self.conv2g(out) + self.conv2b(out.pow(2)))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class QResNet(nn.Module):
    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        for name, m in self.named_modules():  # the authors' ReLinear init: r Kaiming, g = 1, b = 0
            if isinstance(m, nn.Conv2d) and name.endswith("g"):
                nn.init.zeros_(m.weight)
                nn.init.ones_(m.bias)
            elif isinstance(m, nn.Conv2d) and name.endswith("b"):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(QBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def qresnet(depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> QResNet:
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return QResNet([n, n, n], num_classes=num_classes, in_channels=in_channels)


def qresnet20(num_classes: int = 10, in_channels: int = 3) -> QResNet:
    return qresnet(20, num_classes, in_channels)


# --------------------------------------------------------------------------------------------------- QuadraLib
class QuadraourConv(nn.Module):
    """QuadraLib's block: a BatchNorm on each of three conv branches, product of the first two plus the third."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.conv2 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.conv3 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.bn1(self.conv1(x))
        x2 = self.bn2(self.conv2(x))
        x3 = self.bn3(self.conv3(x))
        return torch.mul(x1, x2) + x3


class QuadraLibNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(QuadraourConv(in_channels, 8), nn.ReLU(inplace=True),
                                      QuadraourConv(8, 16, stride=2, bias=True), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def quadralib_net(num_classes: int = 10, in_channels: int = 1) -> QuadraLibNet:
    return QuadraLibNet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------------- compact / T2 / T4 / QRes
class CompactNet(nn.Module):
    """Two compact neurons; the second one grouped and dilated, written with the power term first."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv_r = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv_b = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2_r = nn.Conv2d(8, 8, 3, 2, 2, dilation=2, groups=2, bias=False)
        self.conv2_b = nn.Conv2d(8, 8, 3, 2, 2, dilation=2, groups=2, bias=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv_r(x) + self.conv_b(x.pow(2))))
        x = self.conv2_b(x ** 2) + self.conv2_r(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class T2Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, 2, 1, bias=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x * x)))
        x = self.conv2(torch.square(x))
        return self.fc(x.mean((2, 3)))


class T4Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv3 = nn.Conv2d(8, 8, 3, 2, 1, bias=False)
        self.conv4 = nn.Conv2d(8, 8, 3, 2, 1, bias=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(torch.mul(self.conv1(x), self.conv2(x)))
        x = self.conv4(x) * self.conv3(x)
        return self.fc(x.mean((2, 3)))


class QResNeuronNet(nn.Module):
    """QRes (Bu & Karpatne): ``a * conv2(x) + a`` with ``a = conv1(x)``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        x = F.relu(a * self.conv2(x) + a)
        return self.fc(x.mean((2, 3)))


def compact_net(num_classes: int = 10, in_channels: int = 1) -> CompactNet:
    return CompactNet(num_classes, in_channels)


def t2_net(num_classes: int = 10, in_channels: int = 1) -> T2Net:
    return T2Net(num_classes, in_channels)


def t4_net(num_classes: int = 10, in_channels: int = 1) -> T4Net:
    return T4Net(num_classes, in_channels)


def qres_net(num_classes: int = 10, in_channels: int = 1) -> QResNeuronNet:
    return QResNeuronNet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------------- MLP
class FanMLP(nn.Module):
    """Linear fan neurons: ``fc1r(x) * fc1g(x) + fc1b(x ** 2)``, then ``fc2b(torch.square(h)) + fc2g(h) * fc2r(h)``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, in_features: int = 64, hidden: int = 32) -> None:
        super().__init__()
        n = in_channels * in_features
        self.fc1r, self.fc1g, self.fc1b = nn.Linear(n, hidden), nn.Linear(n, hidden), nn.Linear(n, hidden)
        self.fc2r = nn.Linear(hidden, hidden)
        self.fc2g = nn.Linear(hidden, hidden)
        self.fc2b = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        h = torch.relu(self.fc1r(x) * self.fc1g(x) + self.fc1b(x ** 2))
        h = torch.tanh(self.fc2b(torch.square(h)) + self.fc2g(h) * self.fc2r(h))
        return self.head(h)


def fan_mlp(num_classes: int = 10, in_channels: int = 1) -> FanMLP:
    return FanMLP(num_classes, in_channels)


# --------------------------------------------------------------------------------------------------- left alone
class ReluFactorNet(nn.Module):
    """``relu(conv1(x)) * conv2(x) + conv3(x * x)``: a factor passes through relu, so no registered type fits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.conv3 = nn.Conv2d(in_channels, 8, 3, 1, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x)) * self.conv2(x) + self.conv3(x * x)
        return self.fc(x.mean((2, 3)))


def relu_factor_net(num_classes: int = 10, in_channels: int = 1) -> ReluFactorNet:
    return ReluFactorNet(num_classes, in_channels)


class PartialNet(nn.Module):
    """Plain conv stem, one fan neuron, a plain conv, a head: only one layer is quadratic."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.qr = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.qg = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.qb = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.plain = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.qr(x) * self.qg(x) + self.qb(x.pow(2))))
        x = F.relu(self.bn2(self.plain(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def partial_net(num_classes: int = 10, in_channels: int = 1) -> PartialNet:
    return PartialNet(num_classes, in_channels)


class StrideMismatchNet(nn.Module):
    """Factors from convs of different stride (and padding) whose outputs happen to agree in size (5x5 input):
    ``conv1`` stride 2 pad 1, ``conv2`` stride 1 pad 0. No registered type has branches of different geometry."""

    def __init__(self, num_classes: int = 10, in_channels: int = 4, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.conv1 = conv(in_channels, 8, 3, 2, 1)
        self.conv2 = conv(in_channels, 8, 3, 1, 0)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x) * self.conv2(x)
        return self.fc(x.flatten(2).mean(2))


def stride_mismatch_net(num_classes: int = 10, in_channels: int = 4) -> StrideMismatchNet:
    return StrideMismatchNet(num_classes, in_channels, dims=2)


def stride_mismatch_net1d(num_classes: int = 10, in_channels: int = 4) -> StrideMismatchNet:
    return StrideMismatchNet(num_classes, in_channels, dims=1)


# --------------------------------------------------------------------------------------------------- Conv1d
class FanNet1d(nn.Module):
    """Conv1d fan neurons: stride 2 with ``torch.mul(x, x)``, then dilated and grouped with ``x * x`` first."""

    def __init__(self, num_classes: int = 10, in_channels: int = 2) -> None:
        super().__init__()
        self.c1r = nn.Conv1d(in_channels, 8, 5, 2, 2)
        self.c1g = nn.Conv1d(in_channels, 8, 5, 2, 2)
        self.c1b = nn.Conv1d(in_channels, 8, 5, 2, 2)
        self.bn = nn.BatchNorm1d(8)
        self.c2r = nn.Conv1d(8, 8, 3, 1, 2, dilation=2, groups=4, bias=False)
        self.c2g = nn.Conv1d(8, 8, 3, 1, 2, dilation=2, groups=4, bias=False)
        self.c2b = nn.Conv1d(8, 8, 3, 1, 2, dilation=2, groups=4, bias=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c1r(x) * self.c1g(x) + self.c1b(torch.mul(x, x))))
        x = self.c2b(x * x) + self.c2r(x) * self.c2g(x)
        return self.fc(x.mean(2))


class T4Net1d(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv1d(in_channels, 8, 3, 1, 1)
        self.b = nn.Conv1d(in_channels, 8, 3, 1, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.mul(self.a(x), self.b(x)).mean(2))


def fan_net1d(num_classes: int = 10, in_channels: int = 2) -> FanNet1d:
    return FanNet1d(num_classes, in_channels)


def t4_net1d(num_classes: int = 10, in_channels: int = 2) -> T4Net1d:
    return T4Net1d(num_classes, in_channels)


# ------------------------------------------------------------------------------------- beyond classifiers
class QSegBlock(nn.Module):
    """relu(bn(conv_r(x) * conv_g(x) + conv_b(x.pow(2)))), the authors' inline neuron, at any stride."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_r = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv_g = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv_b = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv_r(x) * self.conv_g(x) + self.conv_b(x.pow(2))))


class QSegNet(nn.Module):
    """A fully convolutional segmentation net: encoder (one stride-2 quadratic block), nearest upsampling back to the
    input size, a skip, a 1x1 class map ``[N, classes, H, W]`` (any even H and W)."""

    def __init__(self, classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.enc1 = QSegBlock(in_channels, 8)
        self.enc2 = QSegBlock(8, 16, stride=2)
        self.dec = QSegBlock(24, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = F.interpolate(self.enc2(a), scale_factor=2.0, mode="nearest")
        return self.head(self.dec(torch.cat([a, b], 1)))


class QTwoHeads(QSegNet):
    """:class:`QSegNet` with a classifier head too: ``{"seg": [N, classes, H, W], "cls": [N, num_classes]}``."""

    def __init__(self, classes: int = 4, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(classes, in_channels)
        self.cls = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.enc1(x)
        e = self.enc2(a)
        b = F.interpolate(e, scale_factor=2.0, mode="nearest")
        return {"seg": self.head(self.dec(torch.cat([a, b], 1))), "cls": self.cls(e.mean((2, 3)))}


def seg_net(classes: int = 4, in_channels: int = 3) -> QSegNet:
    return QSegNet(classes, in_channels)


def two_heads(classes: int = 4, num_classes: int = 10, in_channels: int = 3) -> QTwoHeads:
    return QTwoHeads(classes, num_classes, in_channels)


# --------------------------------------------------------------------------------------------------- table
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "qresnet20": (3, 32, 32), "quadralib_net": (1, 12, 12), "compact_net": (1, 12, 12), "t2_net": (1, 12, 12),
    "t4_net": (1, 12, 12), "qres_net": (1, 12, 12), "fan_mlp": (1, 8, 8), "relu_factor_net": (1, 12, 12),
    "partial_net": (1, 12, 12), "stride_mismatch_net": (4, 5, 5), "stride_mismatch_net1d": (4, 5),
    "fan_net1d": (2, 32), "t4_net1d": (2, 16),
}
"""Builder name -> example input shape (C, H, W) or (C, L); qresnet20 also runs at (3, 16, 16) or (1, 28, 28)."""

EXPECTED: dict[str, dict[str, int]] = {
    "qresnet20": {"fan": 18}, "quadralib_net": {"quadralib": 2}, "compact_net": {"compact": 2},
    "t2_net": {"t2": 2}, "t4_net": {"t4": 2}, "qres_net": {"qres": 1}, "fan_mlp": {"fan": 2},
    "relu_factor_net": {}, "partial_net": {"fan": 1}, "stride_mismatch_net": {}, "stride_mismatch_net1d": {},
    "fan_net1d": {"fan": 2}, "t4_net1d": {"t4": 1},
}
"""Builder name -> neuron type -> how many neurons adopt should find (zero counts dropped by the tests)."""


@torch.no_grad()
def randomize(model: nn.Module, input_shape: Sequence[int], seed: int = 0, scale: float = 0.1,
              batch: int = 16) -> nn.Module:
    """Move ``model`` off its ReLinear init the way training would: every conv/linear weight and bias gets
    noise (weights ``scale``·N(0,1)/√fan_in, biases ``scale``·N(0,1); so gates are no longer 1 and power terms no
    longer 0), every BatchNorm takes its running
    statistics from one batch of N(0,1) inputs (so activations stay well-scaled through depth) and a random affine
    (γ = 1 ± 0.1, β = ±0.1). Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            fan_in = m.weight[0].numel()
            m.weight.add_(scale / fan_in ** 0.5 * torch.randn(m.weight.shape, generator=g))
            if m.bias is not None:
                m.bias.add_(scale * torch.randn(m.bias.shape, generator=g))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    model(torch.randn((batch, *input_shape), generator=g))
    for m in bns:
        m.momentum = 0.1
        m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def build(name: str, seed: int = 0, input_shape: Sequence[int] | None = None, **kwargs) -> nn.Module:
    """``BUILDER(**kwargs)`` with seeded init, randomized (:func:`randomize`) at its example input shape."""
    torch.manual_seed(seed)
    shape = tuple(input_shape or INPUT_SHAPES[name])
    if "in_channels" not in kwargs:
        kwargs["in_channels"] = shape[0]
    return randomize(globals()[name](**kwargs), shape, seed=seed)


def save_dataparallel_checkpoint(model: nn.Module, path, best_prec1: float = 91.25, epoch: int = 199,
                                 with_args: bool = False, numpy_scalars: bool = False) -> None:
    """Save ``model`` as the research training scripts do with a ``torch.nn.DataParallel`` model:
    ``torch.save({'epoch', 'state_dict': {'module.' + key: tensor}, 'best_prec1'}, path)``. ``with_args`` adds the
    ``argparse.Namespace`` of training arguments (``'args'``); ``numpy_scalars`` stores ``best_prec1`` as a
    ``numpy.float64`` (both refused by ``torch.load(weights_only=True)`` unless allowed)."""
    ckpt = {"epoch": epoch, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "best_prec1": np.float64(best_prec1) if numpy_scalars else best_prec1}
    if with_args:
        ckpt["args"] = argparse.Namespace(arch="qresnet20", epochs=200, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                          batch_size=128, save_dir="save_qresnet20", half=False)
    torch.save(ckpt, path)


def save_dataparallel_checkpoint_with_args(model: nn.Module, path) -> None:
    """:func:`save_dataparallel_checkpoint` with the ``argparse.Namespace`` of training arguments."""
    save_dataparallel_checkpoint(model, path, with_args=True)
